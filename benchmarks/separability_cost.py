#!/usr/bin/env python
"""What token-level separability costs, as a multiple of one feature extraction of the same images.

    python benchmarks/separability_cost.py --cifar10 /path/to/cifar10        # ~10 min on 2 CPU cores

On the CIFAR-10 test split (10,000 images: 6,000 / 2,000 / 2,000 fit / validation / test pairs) with
ViT-Tiny/4 models (an untrained evaluated encoder and an untrained reference: the cost does not depend on
the weights), one process times, alternately and twice each:

- ``extract``: one mask-free feature extraction of the split's images (what linear probe and kNN read);
- ``separability``: the default scheme (five alphas, the training mask ratio and ratio 0, every baseline,
  classification, 1,000 bootstrap resamples), and the same with ``unmasked=false`` (training ratio only).

Writes ``benchmarks/results/separability-cost-<device>.json`` and ``.md``; the ratios are medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from imae.eval.config import EvalConfig, EvalDataConfig
from imae.eval.data import load_eval_split
from imae.eval.features import extract
from imae.eval.pairs import make_pairs
from imae.eval.separability import measure
from imae.eval.subject import Subject
from imae.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"


def subject(seed: int, label: str) -> Subject:
    torch.manual_seed(seed)
    model = create_model("mae_vit_tiny_patch4").eval().requires_grad_(False)
    s = Subject(path=Path(label), run_dir=None, model=model, train_config=None, fingerprint=label, label=label,
                source=Path(label))
    s.identity = lambda evaluated: {"label": label}
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", required=True, help="CIFAR-10 ImageFolder tree (train/, test/)")
    ap.add_argument("--per-class", type=int, default=1000, help="test images per class (default: all 1000)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    split = load_eval_split(EvalDataConfig(dataset="cifar10", path=args.cifar10, eval_per_class=args.per_class),
                            "eval", 32, progress=False)
    e, r = subject(0, "evaluated"), subject(1, "reference")
    e.model.to(device), r.model.to(device)
    pairs = make_pairs(split.labels, seed=0)
    timings: dict[str, list[float]] = {"extract": [], "separability": [], "separability_masked_only": []}

    def run_sep(unmasked: bool) -> float:
        cfg = EvalConfig()
        cfg.separability.mask_ratio, cfg.separability.same_class_p = 0.75, "random"
        cfg.separability.unmasked = unmasked
        t0 = time.perf_counter()
        measure(e, r, split, pairs, cfg, device=device, show_progress=False)
        return time.perf_counter() - t0

    for _ in range(args.repeats):
        t0 = time.perf_counter()
        extract(e.model, split, "bench", batch_size=256, device=device, cache=None, show_progress=False)
        timings["extract"].append(time.perf_counter() - t0)
        timings["separability"].append(run_sep(True))
        timings["separability_masked_only"].append(run_sep(False))
        print({k: round(v[-1], 1) for k, v in timings.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    out = {"device": str(device), "host": platform.node(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "images": len(split), "pairs": pairs.summary(),
           "model": "mae_vit_tiny_patch4", "seconds": timings,
           "median_s": med, "ratio_to_extract": {k: med[k] / med["extract"] for k in med}}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"separability-cost-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["| measurement | median s | × one extraction |", "| --- | --- | --- |"]
    md += [f"| {k} | {med[k]:.1f} | {out['ratio_to_extract'][k]:.2f} |" for k in med]
    stem.with_suffix(".md").write_text(
        f"Separability cost on {len(split)} CIFAR-10 test images ({pairs.summary()['test']} test pairs), "
        f"ViT-Tiny/4, {device}, {torch.get_num_threads()} threads (`python benchmarks/separability_cost.py`)\n\n"
        + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
