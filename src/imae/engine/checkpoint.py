"""Checkpoints: atomic writes, safe (weights-only) loading, resume discovery, strict state-dict loading.

A training checkpoint is a dict in the official MAE layout plus the resume state::

    {"model": state_dict, "optimizer": ..., "epoch": 0-based index of the last completed epoch (-1: none;
     file names and logs count from 1: "epoch": 4 is in checkpoint-5.pth), "step_in_epoch": batches of the
     next epoch already done (0 at epoch ends), "global_step": optimiser steps, "config": resolved
     configuration, "kind": "mae" | "imae", "arch": architecture, "scaler": None, "rng": {...},
     "metrics": last epoch's averages, "version": imae version}

With ``train.checkpoint_format=safetensors`` the weights live in ``checkpoint-*.safetensors`` beside the
``.pth`` (see :mod:`imae.engine.safetensors_io`); ``load`` joins them again. ``load`` also takes a
standalone ``.safetensors`` file and a Hugging Face ViTMAE folder (see :mod:`imae.models.hf`).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.nn as nn

from imae.engine import safetensors_io
from imae.errors import CheckpointError, MissingDependency, TrainingError

# what the weights-only unpickler may build besides tensors and plain containers: official MAE
# checkpoints carry their argparse.Namespace of training arguments
SAFE_GLOBALS: list[Any] = [argparse.Namespace]

_NUMBERED = re.compile(r"checkpoint-(\d+)\.pth$")


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A failure (disk full, permission denied, a kill mid-write) leaves the previous file untouched.
    """
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` to a temporary file beside ``path``, fsync, rename over ``path`` (see save_atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise TrainingError(f"could not write checkpoint {path} ({why}); the previous checkpoint is intact; "
                            f"free space or fix permissions, then resume with --resume {path.parent}") from None


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temporary files that a killed process left half-written (they never replace a checkpoint)."""
    for p in Path(run_dir).glob(".checkpoint-*.tmp*"):
        p.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors, containers and allow-listed types only.

    A bare state dict is wrapped as ``{"model": state_dict}``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pth or .safetensors file, a run "
                              f"directory or a Hugging Face model folder")
    if path.is_dir() and hf_folder(path):
        from imae.models.hf import load_folder

        return load_folder(path)
    if path.is_dir():
        found = latest_complete(path)
        if found is None:
            raise CheckpointError(f"{path} holds no readable checkpoint-*.pth; pass a checkpoint file or a "
                                  f"run directory of `imae pretrain`")
        return found[1]
    if path.suffix == ".safetensors":
        return safetensors_io.load_checkpoint(path)
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
    if "model" not in obj and "model_file" in obj:  # train.checkpoint_format=safetensors
        safetensors_io.attach_weights(obj, path)
    if "model" not in obj:
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = {"model": obj}
        elif "state_dict" in obj:
            obj = dict(obj, model=obj["state_dict"])
        else:
            raise CheckpointError(f"{path} has no 'model' entry (keys: {', '.join(list(obj)[:8])})")
    obj["_path"] = str(path)
    return obj


def checkpoints_in(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run directory, newest (most training done) first; unreadable ones skipped later."""
    run_dir = Path(run_dir)
    files = [run_dir / "checkpoint-last.pth"] if (run_dir / "checkpoint-last.pth").is_file() else []
    numbered = sorted((p for p in run_dir.glob("checkpoint-*.pth") if _NUMBERED.search(p.name)),
                      key=lambda p: int(_NUMBERED.search(p.name).group(1)), reverse=True)
    return files + numbered


def latest_in(run_dir: Path) -> Path:
    """The checkpoint file of a run directory to evaluate or resume: the newest complete one."""
    return Path(load(run_dir)["_path"])


def latest_complete(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(path, checkpoint) of the newest readable checkpoint, or None.

    ``checkpoint-last.pth`` is always at least as new as any numbered file (it is written first, with the
    same content), so the files are tried in that order and the first readable one is returned: one file
    is read unless the newest is damaged. Tensors are memory-mapped, so a large checkpoint costs little
    until its weights are used.
    """
    for p in checkpoints_in(run_dir):
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(ck, dict) and "model" not in ck and "model_file" in ck:
                safetensors_io.attach_weights(ck, p)
        except MissingDependency:
            raise
        except Exception:  # partial or corrupt: an older one will do
            continue
        if isinstance(ck, dict) and "model" in ck:
            ck["_path"] = str(p)
            return p, ck
    return None


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
    ``.pth`` of the resume state (``fmt="safetensors"``; see :mod:`imae.engine.safetensors_io`)."""
    if fmt == "safetensors":
        try:
            safetensors_io.save_split(obj, path)
        except OSError as e:
            raise TrainingError(f"could not write checkpoint {path} ({e.strerror}); the previous checkpoint is "
                                f"intact; free space or fix permissions, then resume with --resume "
                                f"{Path(path).parent}") from None
    else:
        save_atomic(obj, path)


def hf_folder(path: Path) -> bool:
    """Whether folder ``path`` looks like a Hugging Face model folder (or a hub cache entry), not a run."""
    names = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return any((Path(path) / n).exists() for n in names) or (Path(path) / "snapshots").is_dir()


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                    strict: bool = True, ignore: tuple[str, ...] = ()) -> None:
    """``model.load_state_dict`` with one clear error naming missing, unexpected and mis-shaped keys.

    Keys starting with any prefix in ``ignore`` may be missing from ``state_dict``.
    """
    state_dict = strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model): {_few(shapes)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); it was saved for "
                              f"another architecture or image size: pick the matching --preset / model")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, ck: dict[str, Any]) -> None:
    """Load a checkpoint being resumed (``ck``, as ``load`` returns it) into ``model`` and ``optimizer``."""
    load_state_dict(model, ck["model"], source=ck["_path"])
    try:
        optimizer.load_state_dict(ck["optimizer"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"the optimiser state of {ck['_path']} does not fit ({e}); resume with the "
                              f"configuration it was saved with") from None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    out = {}
    for k, v in state_dict.items():
        for pre in ("module.", "_orig_mod."):
            while k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def _few(items: list[str], n: int = 6) -> str:
    """Up to ``n`` names, whole blocks folded (``blocks.2.*``), then how many more."""
    groups: list[str] = []
    for k in items:
        parts = k.split(".")
        if " " not in k and len(parts) > 2 and parts[1].isdigit():  # shape messages stay whole
            k = ".".join(parts[:2]) + ".*"
        if k not in groups:
            groups.append(k)
    return ", ".join(groups[:n]) + (f" ... (+{len(groups) - n} more)" if len(groups) > n else "")
