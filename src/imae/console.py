"""What the user sees on the terminal: one-line messages and progress bars, on stderr (rank 0 only)."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> tqdm:
    """A tqdm bar (rate, ETA) on stderr; silent on ranks other than 0."""
    # a terminal that reports no size (a bare pty, as under `script`) would give tqdm 0 columns and 0 rows,
    # and it would draw nothing: give it a fixed size there
    fixed = _terminal_columns(sys.stderr) == 0
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=not fixed,
                ncols=80 if fixed else None, nrows=24 if fixed else None, file=sys.stderr, leave=False,
                mininterval=0.5)


def _terminal_columns(stream) -> int | None:
    """The width of the terminal ``stream`` writes to (0 when it reports none), or None when not a terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def close_bars() -> None:
    """Close every open progress bar (a bar clears its line), so that what is printed next starts a line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def info(msg: str, enabled: bool = True) -> None:
    """One line for the user (rank 0 only), printed above any progress bar."""
    if enabled:
        tqdm.write(msg, file=sys.stderr)
