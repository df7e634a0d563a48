"""Writing the report's and the figures' files atomically: a temporary file in the same folder, then a
rename. A failed write (a full disk, a read-only folder) removes the temporary file, leaves any earlier
file of that name untouched, and raises a one-line :class:`OutputError`."""

from __future__ import annotations

import io
import os
from pathlib import Path

from imae.errors import OutputError


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (a full disk raises here, not at the rename)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _error(path: Path, e: OSError) -> OutputError:
    why = e.strerror or str(e) or type(e).__name__
    return OutputError(f"cannot write {path} ({why}); an earlier {path.name} there is unchanged")


def write_files(files: dict[Path, bytes | str]) -> list[Path]:
    """Write every file, all or none: each goes to a temporary file first, and only when all of them are
    written are they renamed into place (so report.html and report.md never disagree after a failure)."""
    tmps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            path = Path(path)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmps[path] = tmp
                _write(tmp, data.encode() if isinstance(data, str) else data)
            except OSError as e:
                raise _error(path, e) from None
        for path, tmp in tmps.items():
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise _error(path, e) from None
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink(missing_ok=True)
    return list(tmps)


def write_file(path: Path, data: bytes | str) -> Path:
    return write_files({Path(path): data})[0]


def save_figure(fig, path: Path, **savefig_kw) -> Path:
    """``fig.savefig`` into memory, then :func:`write_file` (a PNG is never left half-written)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    return write_file(Path(path), buf.getvalue())
