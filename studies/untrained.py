#!/usr/bin/env python
"""Write an untrained model of a preset as a run directory, the "untrained encoder" row of a study.

    python studies/untrained.py digits-mae $HOME/studies/digits/untrained [--seed 0] [--data-path DIR]
        [--device cuda] [--set model.depth=6 ...]      # the flags the study's trained arms get

The folder gets ``config.yaml`` and ``checkpoint-last.pth`` (our layout: weights, architecture, the
configuration, ``epoch: -1``), so every evaluation command reads its data set from it like a trained run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from imae.atomic import save_atomic
from imae.config import build_config
from imae.engine.run_dir import write_config
from imae.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-path")
    ap.add_argument("--device")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="the study's overrides (the architecture and data of its trained arms)")
    args = ap.parse_args()
    path = args.out / "checkpoint-last.pth"
    if path.is_file():
        print(f"{path} exists")
        return
    given = {"output_dir": str(args.out), "seed": args.seed, "data.path": args.data_path, "device": args.device}
    cfg = build_config(args.preset, {k: v for k, v in given.items() if v is not None}, args.sets)
    torch.manual_seed(args.seed)
    model = create_model(cfg.model.name, **cfg.model.overrides())
    args.out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, args.out)
    save_atomic({"model": model.state_dict(), "kind": "mae", "arch": model.arch.to_dict(), "config": cfg.to_dict(),
                 "epoch": -1, "step_in_epoch": 0}, path)
    print(path)


if __name__ == "__main__":
    main()
