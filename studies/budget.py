#!/usr/bin/env python
"""The largest version of issue 26's study that fits a number of device seconds (``BUDGET_S`` of a run.sh).

    python studies/budget.py --mae cifar10-mae-tiny --imae cifar10-imae-tiny --images 50000 \\
        --teacher-epochs 1000 --epochs 400 --budget-s 600 [--mae-img-s 20000 --imae-img-s 11000] [--device cuda]

Versions, smallest first (each adds to the one before): 1 referee, 2 teachers, arms (a) and (b); 3 teachers;
2 referees; arm (a+); arm (h); arms (d) and (e); arms (c), (f), (g) for the first teacher. For each version the
epochs are scaled down from the recipe's (teachers and referees ``--teacher-epochs``, arms ``--epochs``, the same
proportion; (a+) the FLOP ratio of ``flops.py`` times the arms' epochs) to the most that fit; the plan is the
largest version whose teachers still get ``--min-teacher-epochs``, else the smallest at the epochs that fit.
Time of a run: its epochs x images / (training images per second: ``--mae-img-s`` / ``--imae-img-s`` when given,
else steps timed here on ``--device``, as ``estimate.py`` times them) + ``--startup-s``; each evaluation
(separability per referee, semantics, a comparison counting twice) ``--eval-s``, a stated allowance.

It prints one line per run with its time, the total, and a last line ``set: NAME=VALUE ...`` that run.sh
evaluates (TEACHER_SEEDS, REFEREE_SEEDS, ARMS, FIRST_ARMS, TEACHER_EPOCHS, EPOCHS, and the warm-ups of the
shortened schedules, a tenth of their epochs as in the recipes: TEACHER_WARMUP, ARM_WARMUP).
"""

from __future__ import annotations

import argparse
import math

from flops import matched_epochs, ratio

VERSIONS = [  # (teachers, referees, arms per teacher, arms of the first teacher)
    (2, 1, "a b", ""),
    (3, 1, "a b", ""),
    (3, 2, "a b", ""),
    (3, 2, "a ap b", ""),
    (3, 2, "a ap b h", ""),
    (3, 2, "a ap b d e h", ""),
    (3, 2, "a ap b d e h", "c f g"),
]
MAE_ARMS = ("a", "ap")


def plan(v: tuple, te: int, e: int, r: float, sec: dict[str, float], startup: float, eval_s: float) -> dict:
    """{"runs": [(name, seconds)], "total": seconds} of version ``v`` at teacher epochs ``te``, arm epochs ``e``."""
    teachers, referees, arms, first = v
    runs = [(f"teacher-s{t}", te * sec["mae"] + startup) for t in range(teachers)]
    runs += [(f"referee-s{teachers + i}", te * sec["mae"] + startup) for i in range(referees)]
    evals = 0
    for t in range(teachers):
        tags = arms.split() + (first.split() if t == 0 else [])
        for tag in tags:
            epochs = matched_epochs(e, r) if tag == "ap" else e
            runs.append((f"{tag}-t{t}", epochs * sec["mae" if tag in MAE_ARMS else "imae"] + startup))
        compares = sum(x in tags for x in ("a", "ap", "h", "d", "e")) * referees
        evals += len(tags) * (referees + 1) + 2 * compares
    evals += (teachers + 1) * (referees + 1) + referees  # teachers and the untrained encoder; referees' semantics
    runs.append((f"evaluations ({evals} x {eval_s:g} s allowed)", evals * eval_s))
    return {"runs": runs, "total": sum(s for _, s in runs), "te": te, "e": e, "version": v}


def fit(v: tuple, recipe_te: int, recipe_e: int, budget: float, **kw) -> dict | None:
    """The version at the most teacher epochs (at most the recipe's) that fit the budget, or None."""
    best = None
    for te in range(1, recipe_te + 1):
        e = max(1, math.floor(recipe_e * te / recipe_te + 0.5))
        p = plan(v, te, e, **kw)
        if p["total"] > budget:
            break
        best = p
    return best


def warmup(epochs: int) -> int:
    """The warm-up of a shortened schedule: a tenth of its epochs, as the recipes' (1000: 100, 400: 40)."""
    return math.floor(epochs / 10 + 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mae", required=True)
    ap.add_argument("--imae", required=True)
    ap.add_argument("--images", type=int, required=True, help="training images per epoch")
    ap.add_argument("--teacher-epochs", type=int, required=True, help="the recipe's teacher epochs")
    ap.add_argument("--epochs", type=int, required=True, help="the recipe's epochs of each arm")
    ap.add_argument("--budget-s", type=float, required=True, help="device seconds for the whole study")
    ap.add_argument("--mae-img-s", type=float, help="MAE training images per second (default: timed here)")
    ap.add_argument("--imae-img-s", type=float, help="i-MAE training images per second (default: timed here)")
    ap.add_argument("--eval-s", type=float, default=20.0, help="seconds allowed per evaluation")
    ap.add_argument("--startup-s", type=float, default=15.0, help="seconds allowed per training run's start")
    ap.add_argument("--min-teacher-epochs", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    rate = {"mae": args.mae_img_s, "imae": args.imae_img_s}
    how = "given"
    if None in rate.values():
        import torch
        from estimate import step_seconds

        secs = step_seconds(args.mae, args.imae, args.sets, torch.device(args.device), repeats=8)
        rate = {k: b / s for k, (s, b) in secs.items()}
        how = f"timed on {args.device}"
    sec = {k: args.images / v for k, v in rate.items()}
    r = round(ratio(args.mae, args.imae, args.sets)[2], 3)
    kw = dict(r=r, sec=sec, startup=args.startup_s, eval_s=args.eval_s)
    fits = [p for v in VERSIONS if (p := fit(v, args.teacher_epochs, args.epochs, args.budget_s, **kw))]
    print(f"budget: {args.budget_s:g} device seconds; MAE {rate['mae']:.0f}, i-MAE {rate['imae']:.0f} training "
          f"images/s ({how}); {args.images} images an epoch; FLOP ratio {r:.3f}")
    if not fits:
        p = plan(VERSIONS[0], 1, 1, **kw)
        print(f"budget: even the smallest version (1 referee, 2 teachers, arms a b) at 1 epoch needs "
              f"{p['total']:.0f} s; it does not fit")
        raise SystemExit(1)
    good = [p for p in fits if p["te"] >= args.min_teacher_epochs]
    best = good[-1] if good else fits[0]
    teachers, referees, arms, first = best["version"]
    which = (f"the largest version whose teachers get at least {args.min_teacher_epochs} epochs" if good else
             f"no version gives the teachers {args.min_teacher_epochs} epochs; the smallest, at the most that fit")
    print(f"budget: {which}: {referees} "
          f"referee(s), {teachers} teachers, arms {arms} per teacher{f', {first} for the first' if first else ''}; "
          f"teachers and referees {best['te']} epochs (recipe {args.teacher_epochs}), arms {best['e']} "
          f"(recipe {args.epochs}; (a+) {matched_epochs(best['e'], r)})")
    for name, s in best["runs"]:
        print(f"budget:   {name}: {s:.0f} s")
    print(f"budget: total {best['total']:.0f} s of {args.budget_s:g}")
    print(f'set: TEACHER_SEEDS="{" ".join(str(t) for t in range(teachers))}" '
          f'REFEREE_SEEDS="{" ".join(str(teachers + i) for i in range(referees))}" ARMS="{arms}" FIRST_ARMS="{first}" '
          f"TEACHER_EPOCHS={best['te']} EPOCHS={best['e']} TEACHER_WARMUP={warmup(best['te'])} "
          f"ARM_WARMUP={warmup(best['e'])}")


if __name__ == "__main__":
    main()
