#!/usr/bin/env python
"""What measuring every block costs (``--layers all``), as a multiple of measuring the encoder's output
(``--layers last``), per command.

    python benchmarks/depth_cost.py --cifar10 /path/to/cifar10        # ~15 min on 2 CPU cores

With an untrained ViT-Tiny/4 (12 blocks; the extraction cost does not depend on the weights, the probe's
L-BFGS iterations do a little) on a CIFAR-10 subset (``--train-per-class`` training, ``--eval-per-class`` test
images per class), one process times, for ``knn``, ``linprobe`` (the cached probe: its l2 search and curve)
and ``separability`` (the default scheme, classification included), one evaluation at ``features.layers=last``
and one at ``all``, the feature cache off (every run extracts). The features of all twelve blocks come from
one pass; only the fits repeat. Writes ``benchmarks/results/depth-cost-<device>.json`` and ``.md`` (a run with
``--commands`` adds its commands to an earlier run's file of the same sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from separability_cost import subject  # noqa: E402  (this folder's benchmark: an untrained ViT-Tiny/4)

from imae.config.evaluate import EvalConfig, EvalDataConfig
from imae.eval.eval_split import load_eval_split
from imae.eval.knn import run_knn
from imae.eval.linprobe import run_linprobe
from imae.eval.pairs import make_pairs
from imae.eval.separability import measure

RESULTS = Path(__file__).resolve().parent / "results"


def cifar_splits(path: str, train_per_class: int, eval_per_class: int):
    """(train, test) evaluation splits of a CIFAR-10 subset at 32 px (the cost benchmarks' data)."""
    data = EvalDataConfig(dataset="cifar10", path=path, train_per_class=train_per_class, eval_per_class=eval_per_class)
    return load_eval_split(data, "train", 32, progress=False), load_eval_split(data, "eval", 32, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", required=True, help="CIFAR-10 ImageFolder tree (train/, test/)")
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--eval-per-class", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--commands", default="knn,linprobe,separability")
    args = ap.parse_args()
    device = torch.device(args.device)
    train, test = cifar_splits(args.cifar10, args.train_per_class, args.eval_per_class)
    e, r = subject(0, "evaluated"), subject(1, "reference")
    e.model.to(device), r.model.to(device)
    pairs = make_pairs(test.labels, EvalConfig().separability.fractions, "random", 0, None)

    def run(command: str, layers: str) -> dict[str, float]:
        cfg = EvalConfig()
        cfg.features.layers, cfg.features.cache = layers, False
        cfg.separability.mask_ratio, cfg.separability.same_class_p = 0.75, "random"
        cfg.validate()
        t0 = time.perf_counter()
        kw = dict(device=device, show_progress=False)
        if command == "knn":
            timing = run_knn(e, train, test, cfg, cache=None, **kw)["timing"]
        elif command == "linprobe":
            timing = run_linprobe(e, train, test, cfg, cache=None, **kw)["timing"]
        else:
            timing = measure(e, r, test, pairs, cfg, **kw).timing
        return {"total_s": time.perf_counter() - t0, **timing}

    stem = RESULTS / f"depth-cost-{device.type}"
    old = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    same = old.get("train_images") == len(train) and old.get("eval_images") == len(test)
    out: dict[str, dict] = dict(old.get("commands") or {}) if same else {}  # --commands adds to an earlier run
    for command in args.commands.split(","):
        last = run(command, "last")
        every = run(command, "all")
        out[command] = {"last": last, "all": every, "ratio": every["total_s"] / last["total_s"]}
        print(f"{command}: last {last['total_s']:.1f} s, all 12 blocks {every['total_s']:.1f} s, "
              f"ratio {out[command]['ratio']:.2f}", flush=True)
    record = {"device": str(device), "host": platform.node(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "train_images": len(train), "eval_images": len(test),
              "pairs": pairs.summary(), "model": "mae_vit_tiny_patch4 (12 blocks, untrained)", "commands": out}
    RESULTS.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    md = ["| command | --layers last (s) | --layers all (s) | ratio | of which extraction, last / all (s) |",
          "| --- | --- | --- | --- | --- |"]
    md += [f"| {c} | {v['last']['total_s']:.1f} | {v['all']['total_s']:.1f} | {v['ratio']:.2f} | "
           f"{v['last']['extract_s']:.1f} / {v['all']['extract_s']:.1f} |" for c, v in out.items()]
    stem.with_suffix(".md").write_text(
        f"Cost of every block against the last, on {len(train)} CIFAR-10 training and {len(test)} test images "
        f"({len(pairs)} disjoint pairs), ViT-Tiny/4 (12 blocks), {device}, {torch.get_num_threads()} threads "
        f"(`python benchmarks/depth_cost.py`)\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
