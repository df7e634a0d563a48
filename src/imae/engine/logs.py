"""What a run writes while it trains: JSON lines, TensorBoard scalars and a progress bar (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    """``log.jsonl`` (one JSON object per line, ``"kind"``: step | epoch | event) and ``tb/`` events.

    ``purge_step`` (a resumed run: the first step it will redo) hides the TensorBoard points a stopped
    run had logged from that step on, so redone steps are not drawn twice; ``log.jsonl`` keeps every
    record (after a ``resume`` event the redone steps come again: keep the last record of each step)."""

    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        self.enabled = enabled and run_dir is not None
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        path = Path(run_dir) / "log.jsonl"
        self._jsonl = open(path, "a", buffering=1)
        if _ends_mid_line(path):  # a kill during a write left half a record: the next one starts its own line
            self._jsonl.write("\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self._tb = None

    def write(self, kind: str, record: dict[str, Any], step: int | None = None, prefix: str | None = None) -> None:
        if not self.enabled:
            return
        line = {"kind": kind, "time": round(time.time(), 3), **{k: _plain(v) for k, v in record.items()}}
        self._jsonl.write(json.dumps(line) + "\n")
        if self._tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self._tb.add_scalar(f"{prefix or kind}/{k}", v, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return str(v)
    return v
