#!/usr/bin/env python
"""bf16 against fp32 training: do the loss curves agree? (the tolerance the CPU bf16 default rests on)

    python benchmarks/precision_curves.py --cifar10 /path/to/cifar10     # digits preset + a short CIFAR-10 run
    python benchmarks/precision_curves.py --skip-cifar                    # the digits preset alone

For each run, three ``imae pretrain`` runs in this process, all on the same data order: fp32 (seed 0), bf16
autocast (seed 0; forced with ``IMAE_CPU_BF16=1``, so a CPU without bf16 units emulates it: slowly, but with
the same rounding of the matrix products' inputs and fp32 accumulation) and fp32 with seed 1, the yardstick:
how far two equally good fp32 curves lie apart. The tolerance (``TOLERANCE``): every epoch's mean loss of the
bf16 run within 2% of the fp32 run's, and the last epoch's within 1%. Writes
``benchmarks/results/precision-curves.json`` (epoch means, per-step losses, the largest differences, pass /
fail). ``--eval-only``: a digits MAE's linear probe and kNN with fp32 and with bf16 features, each bf16 top-1
within the fp32 one's 95% binomial interval (``precision-eval.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from imae.config import build_config
from imae.engine.train import pretrain
from imae.runtime import precision

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = {"epoch_rel": 0.02, "last_epoch_rel": 0.01}


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def one(preset: str, sets: dict, bf16: bool, seed: int, tmp: Path) -> dict:
    os.environ[precision.ENV] = "1" if bf16 else "0"
    out = tmp / f"{preset}-{'bf16' if bf16 else 'fp32'}-s{seed}"
    t = time.perf_counter()
    run = pretrain(build_config(preset, {**sets, "seed": seed, "device": "cpu", "output_dir": str(out)}))
    start = next(r for r in records(run, "event") if r["event"] == "start")
    assert start["precision"] == ("bf16" if bf16 else "fp32"), start
    return {"precision": start["precision"], "seed": seed, "wall_s": time.perf_counter() - t,
            "epoch_loss": [r["loss"] for r in records(run, "epoch")],
            "step_loss": [r["loss"] for r in records(run, "step")]}


def compare(name: str, preset: str, sets: dict, tmp: Path) -> dict:
    fp32, bf16, other = (one(preset, sets, b, s, tmp) for b, s in ((False, 0), (True, 0), (False, 1)))

    def rel(a: list[float], b: list[float]) -> list[float]:
        return [abs(x - y) / abs(y) for x, y in zip(a, b)]

    d_bf16 = rel(bf16["epoch_loss"], fp32["epoch_loss"])
    d_seed = rel(other["epoch_loss"], fp32["epoch_loss"])
    ok = max(d_bf16) <= TOLERANCE["epoch_rel"] and d_bf16[-1] <= TOLERANCE["last_epoch_rel"]
    out = {"run": name, "preset": preset, "sets": sets, "fp32": fp32, "bf16": bf16, "fp32_seed1": other,
           "max_epoch_rel_diff_bf16": max(d_bf16), "last_epoch_rel_diff_bf16": d_bf16[-1],
           "max_epoch_rel_diff_seed": max(d_seed), "last_epoch_rel_diff_seed": d_seed[-1], "within_tolerance": ok}
    print(f"{name}: bf16 vs fp32 epoch loss: max {max(d_bf16):.4f}, last {d_bf16[-1]:.4f} (seed 1 vs seed 0: max "
          f"{max(d_seed):.4f}, last {d_seed[-1]:.4f}); {'within' if ok else 'OUTSIDE'} tolerance", flush=True)
    return out


def evaluations(tmp: Path, epochs: int) -> dict:
    """A digits MAE (fp32, ``epochs`` epochs) scored by the linear probe and kNN with features extracted in fp32
    and in bf16: each bf16 top-1 must lie within the 95% binomial interval of the fp32 one's test accuracy."""
    from imae.eval.run import evaluate

    os.environ[precision.ENV] = "0"
    run = pretrain(build_config("digits-mae", {"train.epochs": epochs, "train.warmup_epochs": 1, "device": "cpu",
                                               "output_dir": str(tmp / "eval-subject")}))
    out: dict = {"subject": f"digits-mae, {epochs} epochs, fp32", "scores": {}}
    for prec in ("fp32", "bf16"):
        os.environ[precision.ENV] = "1" if prec == "bf16" else "0"
        over = {"device": "cpu", "features.cache_dir": str(tmp / f"features-{prec}"),
                "output_dir": str(tmp / f"eval-{prec}")}
        for cmd in ("linprobe", "knn"):
            res = evaluate(cmd, run, overrides=over)["results"]
            out["scores"][f"{cmd}/{prec}"] = {"top1": res["top1"], "test_images": res.get("test_images")}
    for cmd in ("linprobe", "knn"):
        a, b = out["scores"][f"{cmd}/fp32"], out["scores"][f"{cmd}/bf16"]
        n = a["test_images"] or 360
        half = 1.96 * (a["top1"] * (1 - a["top1"]) / n) ** 0.5
        out[cmd] = {"fp32": a["top1"], "bf16": b["top1"], "diff": b["top1"] - a["top1"], "ci_half_width": half,
                    "within_ci": abs(b["top1"] - a["top1"]) <= half}
        print(f"{cmd}: top-1 fp32 {a['top1']:.4f}, bf16 {b['top1']:.4f} (95% interval +-{half:.4f}): "
              f"{'within' if out[cmd]['within_ci'] else 'OUTSIDE'}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10", help="CIFAR-10 folder for the short CIFAR-10 run")
    p.add_argument("--skip-cifar", action="store_true")
    p.add_argument("--cifar-per-class", type=int, default=64, help="training images per class of the CIFAR-10 run")
    p.add_argument("--cifar-epochs", type=int, default=3)
    p.add_argument("--digits-epochs", type=int, help="shorten the digits run (default: the preset's 30)")
    p.add_argument("--cifar-small", action="store_true", help="a smaller ViT/4 for the CIFAR-10 run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--eval-only", action="store_true",
                   help="only the evaluation check: linear probe and kNN of a digits MAE with fp32 and bf16 features "
                        "(writes precision-eval.json)")
    p.add_argument("--out", default=str(RESULTS / "precision-curves.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "command": " ".join(sys.argv),
           "cpu_has_bf16_units": precision._detected(), "tolerance": TOLERANCE,
           "threads": torch.get_num_threads(),
           "note": "run on a shared 2-core CPU beside other work (wall times are not benchmarks); bf16 forced with "
                   "IMAE_CPU_BF16=1 (emulated where the CPU has no bf16 units: same rounding, fp32 accumulation)",
           "runs": []}
    if args.eval_only:
        with tempfile.TemporaryDirectory() as tmpd:
            res.pop("runs")
            res.update(evaluations(Path(tmpd), args.digits_epochs or 30))
        out = Path(args.out).with_name("precision-eval.json")
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        digits = {"train.log_every": 1}
        if args.digits_epochs:
            digits.update({"train.epochs": args.digits_epochs, "train.warmup_epochs": 1})
        res["runs"].append(compare(f"digits (preset digits-mae, {args.digits_epochs or 30} epochs)", "digits-mae",
                                   digits, tmp))
        if args.cifar10 and not args.skip_cifar:
            sets = {"data.path": args.cifar10, "data.max_per_class": args.cifar_per_class,
                    "train.epochs": args.cifar_epochs, "train.warmup_epochs": 1, "train.batch_size": 64,
                    "train.blr": 1e-3, "train.log_every": 1}
            arch = "ViT-Tiny/4"
            if args.cifar_small:  # a narrower, shallower ViT/4: the emulated bf16 of a CPU without units is slow
                sets.update({"model.embed_dim": 96, "model.depth": 4, "model.num_heads": 3,
                             "model.decoder_embed_dim": 64, "model.decoder_depth": 2, "model.decoder_num_heads": 2})
                arch = "ViT/4 (width 96, depth 4; decoder 64 x 2)"
            res["runs"].append(compare(f"CIFAR-10 ({arch}, {10 * args.cifar_per_class} images, "
                                       f"{args.cifar_epochs} epochs)", "cifar10-mae-tiny", sets, tmp))
    res["all_within_tolerance"] = all(r["within_tolerance"] for r in res["runs"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
