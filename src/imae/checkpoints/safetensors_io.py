"""Model weights as ``.safetensors`` (no pickle): standalone files, and training checkpoints split in two.

A standalone file of ours carries its architecture in the header's metadata (``"imae"``: JSON of
``kind``, ``arch``, ``imae_options``), so it loads like a ``.pth`` checkpoint; a foreign one (timm, an
official MAE converted) is read as a bare state dict.

With ``train.checkpoint_format=safetensors`` a checkpoint ``checkpoint-last.pth`` keeps the resume state
(optimiser, epoch, configuration, ...) and names its weights file ``checkpoint-last.safetensors``
instead of holding ``model``. Both carry the same random token. The weights are written first under a
pending name, then the ``.pth`` (the commit point), then the weights are renamed into place; a reader
takes whichever of the two weights files carries the ``.pth``'s token, so a kill at any moment leaves
a consistent checkpoint (the previous one, or the new one).

``safetensors`` is an optional dependency (``pip install -e '.[hf]'``), imported only here, when needed.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from imae.atomic import save_atomic, write_atomic
from imae.checkpoints.checkpoint import Checkpoint
from imae.errors import CheckpointError, MissingDependency

EXTRA_HINT = "pip install -e '.[hf]' (or pip install safetensors)"
META_KEY = "imae"


def require(what: str):
    """The ``safetensors.torch`` module, or a one-line MissingDependency error naming the extra to install."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise MissingDependency(f"{what} needs the optional package safetensors: {EXTRA_HINT}") from None
    return st


def write(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` atomically; ``metadata`` (JSON-able) goes to the header under ``"imae"``."""
    st = require(f"writing {Path(path).name}")
    header = {"format": "pt"}
    if metadata is not None:
        header[META_KEY] = json.dumps(metadata)
    data = st.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=header)
    write_atomic(Path(path), data)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, our metadata or {}) of a ``.safetensors`` file; one-line CheckpointError if unreadable."""
    st = require(f"reading {path}")
    from safetensors import safe_open

    try:
        tensors = st.load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for damaged headers
        raise CheckpointError(f"cannot read {path} ({str(e).splitlines()[0][:160]}); it is not a complete "
                              f".safetensors file") from None
    try:
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
    except json.JSONDecodeError:
        meta = {}
    return tensors, meta if isinstance(meta, dict) else {}


def load_checkpoint(path: Path) -> Checkpoint:
    """A standalone ``.safetensors`` file as a Checkpoint (its entries: ``model``, and ``kind``, ``arch``,
    ``imae_options`` when written by imae)."""
    tensors, meta = read(path)
    ck: dict[str, Any] = {k: meta[k] for k in ("kind", "arch", "imae_options") if k in meta}
    ck["model"] = tensors
    return Checkpoint.of(ck, path, "safetensors")


# ----------------------------------------------------------------------------------------------
# training checkpoints: resume state in a weights-only .pth, model weights beside it


def weights_path(pth: Path) -> Path:
    return Path(pth).with_suffix(".safetensors")


def pending_path(pth: Path) -> Path:
    return Path(pth).with_name(f".{Path(pth).stem}.pending.safetensors")


def save_split(obj: dict[str, Any], pth: Path) -> None:
    """Write ``obj`` as ``<stem>.safetensors`` (``obj["model"]``) plus ``<stem>.pth`` (everything else)."""
    pth = Path(pth)
    token = uuid.uuid4().hex
    meta = {"kind": obj.get("kind"), "arch": obj.get("arch"), "imae_options": obj.get("imae_options"),
            "token": token, "epoch": obj.get("epoch"), "global_step": obj.get("global_step")}
    write(obj["model"], pending_path(pth), {k: v for k, v in meta.items() if v is not None})
    state = {k: v for k, v in obj.items() if k != "model"}
    state.update(model_file=weights_path(pth).name, model_token=token)
    save_atomic(state, pth)  # the commit point: from here on the pending weights are the checkpoint's
    os.replace(pending_path(pth), weights_path(pth))


def attach_weights(ck: dict[str, Any], pth: Path) -> dict[str, Any]:
    """Put the weights that ``ck`` (a split checkpoint's ``.pth``) names into ``ck["model"]``."""
    pth = Path(pth)
    want = ck.get("model_token")
    named = pth.with_name(str(ck["model_file"]))
    for candidate in (named, pending_path(pth)):
        if not candidate.is_file():
            continue
        tensors, meta = read(candidate)
        if meta.get("token") == want:
            ck["model"] = tensors
            return ck
    raise CheckpointError(f"{pth} names its weights {named.name}, which is missing or from another save; "
                          f"resume from another checkpoint of the run")


def remove_weights(pth: Path) -> None:
    """Delete the weights files that belong to split checkpoint ``pth`` (when it is pruned)."""
    for p in (weights_path(pth), pending_path(pth)):
        p.unlink(missing_ok=True)
