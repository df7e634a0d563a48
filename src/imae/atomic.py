"""Atomic file writes, the one way every file of imae is written: a temporary file beside the target
(``.<name>.tmp<pid>``), fsync, then a rename over it.

A failure (disk full, permission denied, a kill mid-write) leaves what the target held before untouched and
raises ``OSError`` (``filename``: the target; torch.save's RuntimeError on a full disk is one too): the
caller says what the file is and what to do, with :func:`write_reason` for the cause in a few words.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

Data = bytes | str | Callable[[BinaryIO], None]  # a function writes to the open (binary) file itself


def write_atomic(path: str | Path, data: Data) -> Path:
    """Write ``data`` (bytes, text, or ``write(file)``) to ``path`` atomically; returns ``path``."""
    return write_all_atomic({Path(path): data})[0]


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def write_all_atomic(files: dict[Path, Data]) -> list[Path]:
    """Write every file, all or none: each goes to its temporary file first, and only when all are written are
    they renamed into place (so, e.g., report.html and report.md never disagree after a failure)."""
    tmps: dict[Path, Path] = {}
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            tmps[path] = temp_path(path)
            with open(tmps[path], "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())  # a full disk raises here, not at the rename
        for path, tmp in tmps.items():
            os.replace(tmp, path)
        for folder in {p.parent for p in tmps}:
            _fsync_dir(folder)
    except (OSError, RuntimeError) as e:
        raise OSError(getattr(e, "errno", None), write_reason(e), str(path)) from e
    finally:
        for tmp in tmps.values():
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return list(tmps)


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before the rename (a killed writer leaves it; it never replaces ``path``)."""
    return Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")


def write_reason(error: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's reason, else the first line of the message."""
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
