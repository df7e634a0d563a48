"""The README's main command: the whole pipeline on the embedded ``digits`` data set, on a CPU in minutes."""

from __future__ import annotations

import sys
from pathlib import Path

from imae.config import build_config
from imae.engine.train import pretrain


def run(out: Path, device: str = "auto", epochs: int | None = None) -> Path:
    """Pre-train the digits MAE into ``out/mae``; prints and returns the run directory."""
    over = {"device": device, "output_dir": str(out / "mae")}
    if epochs:
        over["train.epochs"] = epochs
    cfg = build_config("digits-mae", over)
    mae_dir = pretrain(cfg, resume="auto")
    print(f"MAE run directory: {mae_dir}", file=sys.stdout)
    return mae_dir
