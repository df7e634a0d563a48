#!/usr/bin/env python
"""What the training monitor (``train.monitor_every``) costs, as a share of training time, on the digits and
CIFAR-10 CPU presets.

    python benchmarks/monitor_cost.py [--cifar10 /path/to/cifar10]

Each case pre-trains two epochs of its preset with ``train.monitor_every=1`` in this process; each epoch record
holds both the epoch's training time (``time_s``, the monitor not included) and the monitor's (``monitor_s``),
so their ratio is measured on the same machine state. The first call also builds the monitor's subsets; the
share at the preset's ``monitor_every`` N is the second call's ``monitor_s / (N * time_s)``. Cases:
``digits-mae`` and ``digits-imae`` (its teacher: the digits-mae run just trained; the monitor adds the
un-mixing gain there); with ``--cifar10`` also ``cifar10-mae-tiny`` and ``cifar10-imae-tiny`` (likewise) at the
CPU studies' scale (``data.max_per_class=500``), and the CPU study's own teacher preset
(``studies/cifar10-cpu/mae.yaml``: a ViT 96 wide and 4 deep, ``monitor_every`` 50 from its base). Writes
``benchmarks/results/monitor-cost-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from imae.config import build_config
from imae.engine.train import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
STUDY_PRESET = str(Path(__file__).resolve().parents[1] / "studies" / "cifar10-cpu" / "mae.yaml")


def one_epoch(preset: str, out: Path, **over) -> dict:
    """Two epochs of ``preset`` with the monitor after each: the first call builds the monitor's subsets, the
    second is what every later call costs; the share at the preset's ``monitor_every`` N is the second call's
    seconds over N epochs of training (the second epoch's)."""
    cfg = build_config(preset, {"output_dir": str(out), "train.epochs": 2, "train.warmup_epochs": 0,
                                "train.monitor_every": 1, "device": "cpu", **over})
    every = build_config(preset, {}).train.monitor_every
    run = pretrain(cfg)
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    first, rec = recs[0], recs[-1]
    share = rec["monitor_s"] / (every * rec["time_s"]) if every else None
    return {"run": str(run), "epoch_s": rec["time_s"], "monitor_s": rec["monitor_s"],
            "first_monitor_s": first["monitor_s"], "preset_monitor_every": every, "share_at_preset": share,
            "measures": {k: v for k, v in rec.items() if k.startswith("monitor_")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", help="CIFAR-10 ImageFolder tree: also the CIFAR-10 CPU case")
    ap.add_argument("--cifar-per-class", type=int, default=500)
    args = ap.parse_args()
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases["digits-mae"] = one_epoch("digits-mae", root / "mae")
        cases["digits-imae"] = one_epoch("digits-imae", root / "imae", **{"imae.teacher": cases["digits-mae"]["run"]})
        if args.cifar10:
            data = {"data.path": args.cifar10, "data.max_per_class": args.cifar_per_class}
            cases["cifar10-mae-tiny"] = one_epoch("cifar10-mae-tiny", root / "c10-mae", **data)
            cases["cifar10-imae-tiny"] = one_epoch("cifar10-imae-tiny", root / "c10-imae", **data,
                                                   **{"imae.teacher": cases["cifar10-mae-tiny"]["run"]})
            cases["cifar10-cpu study"] = one_epoch(STUDY_PRESET, root / "c10-study", **data)
    for c in cases.values():
        del c["run"]
    out = {"device": "cpu", "host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / "monitor-cost-cpu"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["| preset | epoch (s) | one monitor (s; the first, with its set-up) | preset monitor_every | "
          "share of training time |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {k} | {v['epoch_s']:.1f} | {v['monitor_s']:.1f} ({v['first_monitor_s']:.1f}) | "
           f"{v['preset_monitor_every']} | {100 * v['share_at_preset']:.1f} % |"
           for k, v in cases.items() if v["share_at_preset"] is not None]
    stem.with_suffix(".md").write_text(f"Training monitor cost, CPU, {torch.get_num_threads()} threads "
                                       f"(`python benchmarks/monitor_cost.py`)\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
