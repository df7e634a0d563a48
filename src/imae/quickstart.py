"""The README's main command: the whole pipeline on the embedded ``digits`` data set, on a CPU in minutes.

1. pre-train a vanilla MAE (``digits-mae``): the baseline and the teacher;
2. pre-train an i-MAE from it (``digits-imae``: the MAE is the frozen teacher and the student's start).
Each step resumes if its run directory already holds a checkpoint, so an interrupted quickstart continues.
"""

from __future__ import annotations

from pathlib import Path

from imae.config import build_config
from imae.engine.logs import info
from imae.engine.train import pretrain


def run(out: Path, device: str = "auto", epochs: int | None = None) -> dict[str, Path]:
    """Train both models under ``out``; returns their run directories."""
    common = {"device": device}
    if epochs:
        common["train.epochs"] = epochs
    mae_cfg = build_config("digits-mae", {**common, "output_dir": str(out / "mae")})
    mae_dir = pretrain(mae_cfg, resume="auto", overrides=common)
    info(f"MAE run directory: {mae_dir}")
    imae_cfg = build_config("digits-imae", {**common, "output_dir": str(out / "imae"),
                                            "imae.teacher": str(mae_dir), "init_from": str(mae_dir)})
    imae_dir = pretrain(imae_cfg, resume="auto", overrides=common)
    info(f"i-MAE run directory: {imae_dir}")
    print(f"MAE:   {mae_dir}\ni-MAE: {imae_dir}")
    return {"mae": mae_dir, "imae": imae_dir}
