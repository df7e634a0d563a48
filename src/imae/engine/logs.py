"""What a run writes while it trains: JSON lines and TensorBoard scalars (progress bars: :mod:`imae.console`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


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
