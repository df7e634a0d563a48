"""Atomic file writes: a temporary file beside the target, fsync, then a rename over it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from imae.errors import OutputError


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
        raise WriteFailed(path, e) from None


class WriteFailed(OutputError):
    """An atomic write that failed; ``why`` is the cause in a few words (``No space left on device``). Whatever
    ``path`` held before is untouched. Callers that know what the file is (a checkpoint) say more."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.path = Path(path)
        self.why = write_reason(error)
        super().__init__(f"could not write {path} ({self.why}); anything there before is unchanged; free space "
                         f"or fix permissions")


def write_reason(error: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's reason, else the first line of the message."""
    if isinstance(error, WriteFailed):
        return error.why
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else type(error).__name__


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
