"""Content checksums, one helper per mechanism.

- :func:`tensor_checksum`: SHA-1 of tensors (dtypes, shapes, bytes), of state dicts and of nested containers
  of them (an optimiser state). Cache entries (decoded images, features) and training checkpoints (their
  weights and optimiser state) carry it, because ``torch.load`` does not check the zip CRCs: bytes damaged
  inside a tensor would load as wrong numbers.
- :func:`content_sha256`: SHA-256 of a checkpoint file (of a folder: of its files, by name): what identifies
  a checkpoint across folders and machines (a reference, a teacher, a feature-cache key).

Imports only the standard library and torch, so that every layer (``checkpoints/`` included) may use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch


def tensor_checksum(*items: object) -> str | None:
    """SHA-1 of ``items``: tensors (dtype, shape, bytes), mappings such as a state dict (keys in sorted order,
    each key's name then its value) and lists, tuples and scalars inside them. None when a top-level item is
    neither a tensor nor a mapping (a missing entry)."""
    h = hashlib.sha1()
    for item in items:
        if not isinstance(item, (torch.Tensor, Mapping)):
            return None
        _update(h, item)
    return h.hexdigest()


def _update(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}:".encode())
            _update(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for value in obj:
            _update(h, value)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_sha256(path: str | Path) -> str:
    """SHA-256 of file ``path``, or of every file under folder ``path`` (each preceded by its relative name)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()
