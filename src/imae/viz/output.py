"""Writing the report's and the figures' files atomically (:mod:`imae.atomic`). A failed write (a full disk,
a read-only folder) leaves any earlier file of that name untouched and raises a one-line :class:`OutputError`."""

from __future__ import annotations

import io
from pathlib import Path

from imae.atomic import write_all_atomic, write_reason
from imae.errors import OutputError


def write_files(files: dict[Path, bytes | str]) -> list[Path]:
    """Write every file, all or none (so report.html and report.md never disagree after a failure)."""
    files = {Path(p): data for p, data in files.items()}
    try:
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
        return write_all_atomic(files)
    except OSError as e:
        path = Path(e.filename) if e.filename else next(iter(files))
        raise OutputError(f"cannot write {path} ({write_reason(e)}); an earlier {path.name} there is "
                          f"unchanged") from None


def write_file(path: Path, data: bytes | str) -> Path:
    return write_files({Path(path): data})[0]


def png_bytes(fig, close: bool = False, **savefig_kw) -> bytes:
    """The figure as PNG bytes (drawn in memory; closed afterwards when ``close``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: Path, **savefig_kw) -> Path:
    """``fig.savefig`` into memory, then :func:`write_file` (a PNG is never left half-written)."""
    return write_file(Path(path), png_bytes(fig, **savefig_kw))
