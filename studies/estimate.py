#!/usr/bin/env python
"""A study's expected training time, from train steps timed on this machine before it starts.

    python studies/estimate.py --mae digits-mae --imae digits-imae --images 1437 --teacher-epochs 30 \\
        --arms "3 mae 8 imae" --epochs 30 [--set model.depth=6 ...] [--device auto]

Times MAE and i-MAE training steps (forward, backward, AdamW; the objective code of ``imae pretrain``, on
random images of the presets' size and batch; warm-up first, then the median of interleaved steps) and
prints images/s and the expected minutes: the teacher (``--teacher-epochs`` of the MAE preset), then each
arm (``--arms``: counts of MAE and i-MAE arms, ``--epochs`` each). Data loading and start-up come on top.

Evaluation: ``--evals "separability 50 semantics 27 compare 30 finetune 6"`` counts what the study evaluates,
and ``--eval-times FILE`` holds the wall time of each evaluation already run here (lines ``kind seconds``,
appended by studies/lib.sh); each kind is estimated at the median of its timed runs, and a kind not timed
yet is named as such. ``--eval-only`` prints just that (the study prints it again once its start's
evaluations, one of each kind before any arm, have run).

``--jobs N --threads T`` (studies/lib.sh's JOBS and THREADS): the study runs N commands side by side, each on T
threads; the steps are timed on T threads and every expected time is divided by N (this assumes the N runs keep
each other's pace, as the CPU scales' small models do on separate cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import make_step, sync, time_arms  # noqa: E402  (the benchmark's step, not a copy)

from imae.config import build_config  # noqa: E402
from imae.engine.objectives import build_objective  # noqa: E402


def step_seconds(mae_preset: str, imae_preset: str, sets: list[str], device: torch.device,
                 repeats: int) -> dict[str, tuple[float, int]]:
    """{"mae" | "imae": (median seconds per step, batch size)} of the two presets."""
    with tempfile.TemporaryDirectory() as tmp:
        mae_cfg = build_config(mae_preset, {"device": str(device)}, sets)
        torch.manual_seed(0)
        mae = build_objective(mae_cfg)
        teacher = Path(tmp) / "teacher.pth"
        torch.save({"model": mae.model.state_dict(), "kind": "mae", "arch": mae.model.arch.to_dict()}, teacher)
        imae_cfg = build_config(imae_preset, {"device": str(device), "imae.teacher": str(teacher)}, sets)
        imae = build_objective(imae_cfg)
        batches = {"mae": mae_cfg.train.batch_size, "imae": imae_cfg.train.batch_size}
        steps = {k: make_step(o, device, batches[k], amp=True) for k, o in (("mae", mae), ("imae", imae))}
        sync(device)
        times = time_arms(steps, device, warmup=2, repeats=repeats)
    return {k: (statistics.median(v), batches[k]) for k, v in times.items()}


def eval_estimate(times: Path | None, counts: str, jobs: int = 1) -> str:
    """One line: the expected evaluation minutes, from the median wall time of each kind timed in ``times``."""
    words = counts.split()
    want = {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    seen: dict[str, list[float]] = {}
    if times is not None and times.is_file():
        for line in times.read_text().splitlines():
            kind, _, sec = line.partition(" ")
            if sec.strip():
                seen.setdefault(kind, []).append(float(sec))
    parts, total, untimed = [], 0.0, []
    for kind, n in want.items():
        if n == 0:
            continue
        if kind in seen:
            med = statistics.median(seen[kind])
            total += n * med / 60
            parts.append(f"{n} {kind} x {med / 60:.1f} min (median of {len(seen[kind])} timed here)")
        else:
            untimed.append(f"{n} {kind}")
    line = f"expected evaluation time: {total / jobs:.0f} min" + (f" ({'; '.join(parts)})" if parts else "")
    if jobs > 1:
        line += f", {jobs} at a time"
    if untimed:
        line += f"; not timed yet: {', '.join(untimed)} (timed once the first of each has run)"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mae", help="the teacher / MAE arms' preset (required unless --eval-only)")
    ap.add_argument("--imae", help="the i-MAE arms' preset (required unless --eval-only)")
    ap.add_argument("--images", type=int, help="training images per epoch (required unless --eval-only)")
    ap.add_argument("--teacher-epochs", type=int, default=0)
    ap.add_argument("--teachers", type=int, default=1, help="MAEs trained from scratch (teachers and referees)")
    ap.add_argument("--extra-mae-epochs", type=int, default=0,
                    help="further MAE epochs in all (the FLOP-matched arms (a+), which train longer)")
    ap.add_argument("--epochs", type=int, default=0, help="epochs of each arm")
    ap.add_argument("--arms", default="1 mae 1 imae", help='"<n> mae <m> imae"')
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--evals", default="", help='"<kind> <count> ...": the evaluations the study runs')
    ap.add_argument("--eval-times", type=Path, help="lines 'kind seconds' of evaluations timed here")
    ap.add_argument("--eval-only", action="store_true", help="print the evaluation estimate only")
    ap.add_argument("--jobs", type=int, default=1, help="commands the study runs side by side")
    ap.add_argument("--threads", type=int, help="threads of each (default: torch's)")
    args = ap.parse_args()
    if args.eval_only:
        print(eval_estimate(args.eval_times, args.evals, args.jobs))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.mae and args.imae and args.images):
        ap.error("--mae, --imae and --images are required (unless --eval-only)")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    words = args.arms.split()
    counts = {words[i + 1]: int(words[i]) for i in range(0, len(words), 2)}
    secs = step_seconds(args.mae, args.imae, args.sets, device, args.repeats)
    per_epoch = {k: s / b * args.images for k, (s, b) in secs.items()}
    for k, (s, b) in secs.items():
        print(f"{k}: {b / s:.0f} training images/s on {device} ({s * 1e3:.0f} ms per step of {b}); "
              f"{per_epoch[k] / 60:.2f} min per epoch of {args.images} images")
    teacher = args.teacher_epochs * per_epoch["mae"] / 60
    arm = {k: args.epochs * per_epoch[k] / 60 for k in per_epoch}
    extra = args.extra_mae_epochs * per_epoch["mae"] / 60
    total = args.teachers * teacher + sum(counts.get(k, 0) * arm[k] for k in arm) + extra
    side = f", {args.jobs} at a time on {torch.get_num_threads()} thread(s) each" if args.jobs > 1 else ""
    print(f"expected training time: each teacher / referee {teacher:.1f} min (x {args.teachers}); per arm: MAE "
          f"{arm['mae']:.1f} min, i-MAE {arm['imae']:.1f} min; FLOP-matched MAE arms {extra:.1f} min in all; "
          f"all {total / args.jobs:.0f} min{side} (data loading and start-up on top)")
    if args.evals:
        print(eval_estimate(args.eval_times, args.evals, args.jobs))


if __name__ == "__main__":
    main()
