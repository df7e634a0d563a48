"""Atomic file writes: a temporary file beside the target, fsync, then a rename over it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from imae.errors import TrainingError


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
