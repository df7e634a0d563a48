#!/usr/bin/env python
"""What token-level separability costs, as a multiple of one feature extraction.

    python benchmarks/separability_cost.py --cifar10 /path/to/cifar10        # ~15 min on 2 CPU cores

On the CIFAR-10 test split (10,000 images, which the default scheme pairs disjointly: 2,000 / 1,000 / 2,000
fit / validation / test pairs) with ViT-Tiny/4 models (an untrained evaluated encoder and an untrained
reference: the cost does not depend on the weights), one process times, alternately:

- ``extract``: one mask-free feature extraction of the whole split (what the linear probe and kNN read);
- ``separability``: the default scheme (five alphas at the training mask ratio 0.75; the mixture and the
  partner-only passes and fits of the encoder and every baseline, i.e. the un-mixing gain; classification;
  1,000 bootstrap resamples);
- with ``--unmasked``, ``separability_with_unmasked``: the same plus ratio 0 (``separability.unmasked=true``).

Ratios are given against the extraction of the whole split and per image (against extracting only the
images the pairs use). Writes ``benchmarks/results/separability-cost-<device>.json`` and ``.md`` (medians).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from imae.config.evaluate import EvalConfig, EvalDataConfig
from imae.eval.eval_split import load_eval_split
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
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--unmasked", action="store_true", help="also time separability.unmasked=true (about 3x longer)")
    args = ap.parse_args()
    device = torch.device(args.device)
    split = load_eval_split(EvalDataConfig(dataset="cifar10", path=args.cifar10, eval_per_class=args.per_class),
                            "eval", 32, progress=False)
    e, r = subject(0, "evaluated"), subject(1, "reference")
    e.model.to(device), r.model.to(device)
    sep = EvalConfig().separability  # the default pairs: 10,000 images, disjoint pairs in fit / validation / test
    pairs = make_pairs(split.labels, sep.fractions, "random", 0, sep.max_images)
    timings: dict[str, list[float]] = {"extract": [], "separability": [], "separability_with_unmasked": []}

    def run_sep(unmasked: bool) -> float:
        cfg = EvalConfig()
        cfg.separability.mask_ratio, cfg.separability.same_class_p = 0.75, "random"
        cfg.separability.unmasked = unmasked
        t0 = time.perf_counter()
        measure(e, r, split, pairs, cfg, device=device, show_progress=False)
        return time.perf_counter() - t0

    if not args.unmasked:
        del timings["separability_with_unmasked"]
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        extract(e.model, split, "bench", batch_size=256, device=device, cache=None, show_progress=False)
        timings["extract"].append(time.perf_counter() - t0)
        print(f"extract {timings['extract'][-1]:.1f} s", flush=True)
        timings["separability"].append(run_sep(False))
        print(f"separability {timings['separability'][-1]:.1f} s", flush=True)
        if args.unmasked:
            timings["separability_with_unmasked"].append(run_sep(True))
            print(f"separability with unmasked {timings['separability_with_unmasked'][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    out = {"device": str(device), "host": platform.node(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "images": len(split), "pairs": pairs.summary(),
           "model": "mae_vit_tiny_patch4", "seconds": timings,
           "median_s": med, "ratio_to_extract": {k: med[k] / med["extract"] for k in med},
           "ratio_per_image": {k: med[k] / (med["extract"] * 2 * len(pairs) / len(split)) for k in med}}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"separability-cost-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["| measurement | median s | × extraction of the split | × extraction of the paired images |",
          "| --- | --- | --- | --- |"]
    md += [f"| {k} | {med[k]:.1f} | {out['ratio_to_extract'][k]:.2f} | {out['ratio_per_image'][k]:.2f} |"
           for k in med]
    stem.with_suffix(".md").write_text(
        f"Separability cost on the {len(split)} CIFAR-10 test images ({2 * len(pairs)} in {len(pairs)} disjoint pairs, "
        f"{pairs.summary()['test']} test pairs), "
        f"ViT-Tiny/4, {device}, {torch.get_num_threads()} threads (`python benchmarks/separability_cost.py`)\n\n"
        + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
