"""Training checkpoint files: writing them, reading one ``.pth`` safely, finding and pruning them in a run.

A training checkpoint is a dict in the official MAE layout plus the resume state::

    {"model": state_dict, "optimizer": ..., "epoch": 0-based index of the last completed epoch (-1: none;
     file names and logs count from 1: "epoch": 4 is in checkpoint-5.pth), "step_in_epoch": batches of the
     next epoch already done (0 at epoch ends), "global_step": optimiser steps, "config": resolved
     configuration, "kind": "mae" | "imae", "arch": architecture, "scaler": None, "rng": {...},
     "metrics": last epoch's averages, "version": imae version,
     "checksum": {"model": SHA-1 of the weights, "optimizer": SHA-1 of the optimiser state}}

``torch.load`` does not check the zip CRCs, so bytes damaged in place inside a tensor would load as wrong
numbers: the checksum (:func:`imae.checksum.tensor_checksum`, the caches' helper) is verified on load.
Checkpoints written before it existed (and official releases) carry none and load unverified.

With ``train.checkpoint_format=safetensors`` the weights live in ``checkpoint-*.safetensors`` beside the
``.pth`` (see :mod:`imae.checkpoints.safetensors_io`); :func:`read_pth` joins them again. Reading returns a
:class:`~imae.checkpoints.checkpoint.Checkpoint`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from imae.atomic import save_atomic, write_reason
from imae.checkpoints import safetensors_io
from imae.checkpoints.checkpoint import Checkpoint
from imae.checksum import tensor_checksum
from imae.errors import CheckpointError, MissingDependency, TrainingError

# what the weights-only unpickler may build besides tensors and plain containers: official MAE
# checkpoints carry their argparse.Namespace of training arguments
SAFE_GLOBALS: list[Any] = [argparse.Namespace]

_NUMBERED = re.compile(r"checkpoint-(\d+)\.pth$")
CHECKSUM_KEY = "checksum"


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose weights (or optimiser state) do not match the checksum stored when it was saved."""


CHECKED = ("model", "optimizer")  # the entries whose tensors a checkpoint's checksum covers


def with_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``"checksum"``: the SHA-1 of each of its ``model`` and ``optimizer`` entries present."""
    sums = {k: tensor_checksum(obj[k]) for k in CHECKED if obj.get(k) is not None}
    return {**obj, CHECKSUM_KEY: {k: v for k, v in sums.items() if v is not None}}


def damage(ck: dict[str, Any], parts: tuple[str, ...] = ("model",)) -> str | None:
    """Why checkpoint ``ck`` is damaged (its ``parts`` do not match the checksum stored when it was saved), or
    None: intact, or written without a checksum (an older imae, an official release), which cannot be told."""
    stored = ck.get(CHECKSUM_KEY)
    if not isinstance(stored, dict):
        return None
    bad = [k for k in parts if k in stored and tensor_checksum(ck.get(k)) != stored[k]]
    if not bad:
        return None
    what = " and ".join("weights" if k == "model" else "optimiser state" for k in bad)
    verb = "does" if what == "optimiser state" else "do"
    return f"its {what} {verb} not match the checksum stored when it was saved"


def verify(ck: dict[str, Any], path: str | Path, parts: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """``ck``, or a one-line CheckpointError when it is damaged (see :func:`damage`)."""
    why = damage(ck, parts)
    if why is not None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: {why}; use another checkpoint of the run (a "
                              f"numbered checkpoint-N.pth) or a backup copy")
    return ck


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temporary files that a killed process left half-written (they never replace a checkpoint)."""
    for p in Path(run_dir).glob(".checkpoint-*.tmp*"):
        p.unlink(missing_ok=True)


def read_pth(path: str | Path, verify_parts: tuple[str, ...] = ("model",)) -> Checkpoint:
    """Load one ``.pth`` (or ``pytorch_model.bin``) with ``weights_only=True``: tensors, containers and
    allow-listed types only.

    A bare state dict is wrapped as ``{"model": state_dict}``; a split checkpoint gets its weights back. The
    stored checksum of ``verify_parts`` is checked (one-line CheckpointError when the file is damaged).
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if code:
            raise CheckpointError(f"refusing to load {path}: unpickling it would run code outside the "
                                  f"allow-list ({code[0][:160]}); only weights-only checkpoints are accepted; "
                                  f"re-save it as a plain state dict from a trusted environment") from None
        raise CheckpointError(f"cannot read checkpoint {path} (not a PyTorch checkpoint, or damaged)") from None
    except Exception as e:  # anything else torch.load raises (a text file: KeyError; an empty one: EOFError)
        lines = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
        if os.path.getsize(path) == 0:
            why = "empty file"
        raise CheckpointError(f"cannot read checkpoint {path} ({why}); it may be truncated or not a PyTorch "
                              f"file") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a dict of weights (got {type(obj).__name__})")
    split = "model" not in obj and "model_file" in obj  # train.checkpoint_format=safetensors
    if split:
        safetensors_io.attach_weights(obj, path)
    if "model" not in obj:
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model": obj}
        elif "state_dict" in obj:
            obj = dict(obj, model=obj["state_dict"])
        else:
            raise CheckpointError(f"{path} has no 'model' entry (keys: {', '.join(list(obj)[:8])})")
    verify(obj, path, verify_parts)
    return Checkpoint.of(obj, path, "pth+safetensors" if split else "pth")


def checkpoints_in(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run directory, newest (most training done) first; unreadable ones skipped later."""
    run_dir = Path(run_dir)
    files = [run_dir / "checkpoint-last.pth"] if (run_dir / "checkpoint-last.pth").is_file() else []
    numbered = sorted((p for p in run_dir.glob("checkpoint-*.pth") if _NUMBERED.search(p.name)),
                      key=lambda p: int(_NUMBERED.search(p.name).group(1)), reverse=True)
    return files + numbered


def latest_complete(run_dir: Path, verify_parts: tuple[str, ...] = ("model",)) -> tuple[Path, Checkpoint] | None:
    """(path, checkpoint) of the newest intact checkpoint, or None.

    ``checkpoint-last.pth`` is always at least as new as any numbered file (it is written first, with the
    same content), so the files are tried in that order and the first readable one whose ``verify_parts``
    match their checksum is returned: one file is read unless the newest is damaged. The newer files passed
    over are listed in the checkpoint's ``skipped`` as ``((path, why), ...)`` for the caller to report.
    Tensors are memory-mapped, so a large checkpoint costs little until its weights are used.
    """
    skipped: list[tuple[Path, str]] = []
    for p in checkpoints_in(run_dir):
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            split = isinstance(ck, dict) and "model" not in ck and "model_file" in ck
            if split:
                safetensors_io.attach_weights(ck, p)
        except MissingDependency:
            raise
        except Exception as e:  # partial or corrupt: an older one will do
            lines = str(e).strip().splitlines()
            skipped.append((p, f"unreadable: {type(e).__name__}{': ' + lines[0][:120] if lines else ''}"))
            continue
        if not (isinstance(ck, dict) and "model" in ck):
            skipped.append((p, "not a checkpoint"))
            continue
        why = damage(ck, verify_parts)
        if why is not None:
            skipped.append((p, why))
            continue
        return p, Checkpoint.of(ck, p, "pth+safetensors" if split else "pth", tuple(skipped))
    return None


def skipped_note(ck: Checkpoint, action: str) -> str | None:
    """One line saying which newer checkpoints :func:`latest_complete` passed over for ``ck``, or None."""
    skipped = ck.skipped
    if not skipped:
        return None
    newest, why = skipped[0]
    more = f" (and {len(skipped) - 1} more damaged)" if len(skipped) > 1 else ""
    return (f"warning: {newest} is damaged ({why}){more}; {action} {ck.path.name}, the newest intact "
            f"checkpoint")


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` numbered checkpoints (checkpoint-last.pth always stays)."""
    if keep_last <= 0:
        return
    numbered = [p for p in checkpoints_in(run_dir) if _NUMBERED.search(p.name)]
    for p in numbered[keep_last:]:
        p.unlink(missing_ok=True)
        safetensors_io.remove_weights(p)


def save_checkpoint(obj: dict[str, Any], path: Path, fmt: str = "pth") -> None:
    """Write a training checkpoint: one ``.pth`` (``fmt="pth"``), or the weights as ``.safetensors`` beside a
    ``.pth`` of the resume state (``fmt="safetensors"``; see :mod:`imae.checkpoints.safetensors_io`). Both carry
    the checksum of the weights and optimiser state (:func:`with_checksum`, unless ``obj`` has it already),
    verified when read."""
    obj = obj if CHECKSUM_KEY in obj else with_checksum(obj)
    path = Path(path)
    try:
        if fmt == "safetensors":
            safetensors_io.save_split(obj, path)
        else:
            save_atomic(obj, path)
    except OSError as e:
        state = (f"the previous checkpoint is intact; free space or fix permissions, then resume with --resume "
                 f"{path.parent}" if checkpoints_in(path.parent) else
                 "no checkpoint of this run was written before, so there is none to resume from; free space or "
                 "fix permissions, then start the run again")
        raise TrainingError(f"could not write checkpoint {path} ({write_reason(e)}); {state}") from None


def hf_folder(path: Path) -> bool:
    """Whether folder ``path`` looks like a Hugging Face model folder (or a hub cache entry), not a run."""
    names = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return any((Path(path) / n).exists() for n in names) or (Path(path) / "snapshots").is_dir()
