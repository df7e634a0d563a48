#!/usr/bin/env python
"""What the attentive probe costs against the linear probe, both on cached encoder outputs.

    python benchmarks/attentive_cost.py --cifar10 /path/to/cifar10 [--train-per-class 500 --eval-per-class 1000]

With an untrained ViT-Tiny/4 (the fits' cost hardly depends on the weights: the attentive probe's AdamW
epochs are fixed, the L-BFGS iterations vary a little) on CIFAR-10 (``--train-per-class`` training and
``--eval-per-class`` test images per class; the CIFAR-10 CPU studies use 500 and all 1,000), one process
extracts the cls features and the tokens once, then times alternately:

- ``linear``: what ``imae linprobe`` fits on the cached cls features (the l2 search on the validation share,
  the refit, the test top-1 curve over ``linprobe.l2_grid``);
- ``attentive``: what ``--head attentive`` adds on the cached tokens (the setting chosen on the same validation
  share, its queries kept and the head refitted, the test split scored), at the default ``probe`` settings.

Writes ``benchmarks/results/attentive-cost-<device>.json`` and ``.md`` (medians and their ratio).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from depth_cost import cifar_splits  # noqa: E402  (this folder's benchmark)

from imae.config.evaluate import EvalConfig
from imae.eval.attentive import attentive_probe, extract_tokens
from imae.eval.probe_heads import accuracy_curve, fit_probe
from imae.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", required=True, help="CIFAR-10 ImageFolder tree (train/, test/)")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--eval-per-class", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    train, test = cifar_splits(args.cifar10, args.train_per_class, args.eval_per_class)
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch4").eval().requires_grad_(False).to(device)
    t0 = time.perf_counter()
    xtr, xte = (extract_tokens(model, s, "bench", layer=model.arch.depth, device=device, show_progress=False)
                for s in (train, test))
    extract_s = time.perf_counter() - t0
    cfg = EvalConfig()
    cfg.probe.head = "attentive"
    cfg.validate()
    ctr, cte = xtr[:, 0].float(), xte[:, 0].float()  # the cls features the linear probe reads
    timings: dict[str, list[float]] = {"linear": [], "attentive": []}
    scores: dict[str, float] = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fit, _ = fit_probe(ctr, train.labels, 10, cfg.linprobe, seed=0, device=device)
        accuracy_curve(ctr, train.labels, cte, test.labels, 10, cfg.linprobe, seed=0, device=device)
        timings["linear"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        entry, _ = attentive_probe(xtr, train.labels, xte, test.labels, 10, cfg, device=device)
        timings["attentive"].append(time.perf_counter() - t0)
        scores["attentive_top1"] = entry["top1"]
        print(f"linear {timings['linear'][-1]:.1f} s, attentive {timings['attentive'][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in timings.items()}
    paired = [a / b for a, b in zip(timings["attentive"], timings["linear"])]  # each repeat's own ratio
    out = {"device": str(device), "host": platform.node(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "train_images": len(train), "eval_images": len(test),
           "model": "mae_vit_tiny_patch4 (untrained)", "probe": cfg.probe.__dict__, "token_extraction_s": extract_s,
           "seconds": timings, "median_s": med, "ratio_attentive_to_linear": med["attentive"] / med["linear"],
           "paired_ratios": paired, "median_paired_ratio": statistics.median(paired),
           **scores}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"attentive-cost-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    text = (f"Attentive against linear probe on cached outputs, {len(train)} CIFAR-10 training and {len(test)} test "
            f"images, ViT-Tiny/4 (untrained), {device}, {torch.get_num_threads()} threads "
            f"(`python benchmarks/attentive_cost.py`)\n\n| probe | median s |\n| --- | --- |\n"
            f"| linear (l2 search, refit, curve) | {med['linear']:.1f} |\n"
            f"| attentive (setting search, refit, scoring) | {med['attentive']:.1f} |\n\n"
            f"ratio of the medians {out['ratio_attentive_to_linear']:.2f}; each repeat's own ratio "
            f"{', '.join(f'{r:.2f}' for r in paired)} (median {out['median_paired_ratio']:.2f}); token extraction "
            f"(once, not timed above) {extract_s:.0f} s\n")
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
