#!/usr/bin/env python
"""The FLOP ratio of an i-MAE training step to an MAE one per training image, and arm (a+)'s epochs.

    python studies/flops.py --mae digits-mae --imae digits-imae --epochs 30 [--set model.depth=6 ...]

Counts with the project's analytic FLOP count (:mod:`imae.models.flops`: matrix products, forward +
backward of the student, plus the frozen teacher's forward on each clean image, i.e. both teacher passes of a
two-branch i-MAE), for the two presets' architectures, mask ratio, branches and distillation. Both arms see
the same images per epoch, so arm (a+), the MAE continued for the same training FLOPs as the i-MAE arm (b),
trains ``round(epochs x ratio)`` epochs (rounded half up). One line:

    FLOP ratio i-MAE/MAE per training image (teacher passes included): 1.837 (...); arm (a+) epochs:
    round(30 x 1.837) = 55

The epochs are computed from the printed (rounded) ratio, so the plan can be checked against its own line.
"""

from __future__ import annotations

import argparse
import math

from imae.config import build_config
from imae.engine.objectives.common import model_overrides
from imae.models.flops import imae_train_flops, mae_train_flops
from imae.models.registry import create_model


def arch_of(cfg):
    return create_model(cfg.model.name, **model_overrides(cfg)).arch


def ratio(mae_preset: str, imae_preset: str, sets: list[str]) -> tuple[float, float, float]:
    """(i-MAE FLOPs per image, MAE FLOPs per image, their ratio) of the two presets' training steps."""
    mcfg, icfg = build_config(mae_preset, {}, sets), build_config(imae_preset, {}, sets)
    teacher, student = arch_of(mcfg), arch_of(icfg)
    imae = imae_train_flops(student, teacher, mask_ratio=icfg.train.mask_ratio, branches=icfg.imae.branches,
                            distill=icfg.imae.distill)
    mae = mae_train_flops(teacher, mask_ratio=mcfg.train.mask_ratio)
    return imae, mae, imae / mae


def matched_epochs(epochs: int, r: float) -> int:
    return int(math.floor(epochs * r + 0.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mae", required=True, help="the teacher / MAE arms' preset")
    ap.add_argument("--imae", required=True, help="the i-MAE arm's preset")
    ap.add_argument("--epochs", type=int, required=True, help="epochs of each arm (of (a) and (b))")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    imae, mae, r = ratio(args.mae, args.imae, args.sets)
    r = round(r, 3)
    print(f"FLOP ratio i-MAE/MAE per training image (teacher passes included): {r:.3f} ({imae / 1e6:.1f} / "
          f"{mae / 1e6:.1f} MFLOP, imae.models.flops); arm (a+) epochs: round({args.epochs} x {r:.3f}) = "
          f"{matched_epochs(args.epochs, r)}")


if __name__ == "__main__":
    main()
