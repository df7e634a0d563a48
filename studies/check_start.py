#!/usr/bin/env python
"""Checks a study makes after its teachers and referees are trained and before any arm runs (issue 26).

    python studies/check_start.py OUT --teachers "0 1 2" --referees "3 4" [--loss-tolerance 0.10]
        [--probe-tolerance 0.03] [--min-probe-gain 0.05]

- **Referees.** Each referee ``OUT/referee-s<seed>`` must reach the teachers' final loss within the tolerance:
  its last epoch's ``loss`` (``log.jsonl``) at most (1 + ``--loss-tolerance``) x the mean of the teachers'
  last-epoch losses; and, where ``eval/semantics.json`` exists for the referee and the teachers, its linear
  probe at least the teachers' mean minus ``--probe-tolerance``, every probe read at one penalty (the first
  teacher's own choice, from each run's ``l2_curve``). A referee that fails is named, with a further
  seed to train in its place (the next seed no teacher or referee uses).
- **Teachers that learned** (``--min-probe-gain``, the CIFAR-10 CPU scale): each teacher's linear probe
  (``OUT/teacher-s<seed>/eval/semantics.json``) must be at least ``--min-probe-gain`` above the untrained
  encoder's (``OUT/untrained``); both numbers are printed.

A run that is not trained (or evaluated) yet is reported as pending (a dry run). Exit status 1 when a check
fails, else 0. Each line starts with ``check:``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def final_loss(run: Path) -> float | None:
    """The ``loss`` of the last epoch record of ``run/log.jsonl`` (or the collected ``epochs.jsonl``)."""
    for name in ("log.jsonl", "epochs.jsonl"):
        log = run / name
        if log.is_file():
            recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            recs = [r for r in recs if r.get("kind", "epoch") == "epoch" and "loss" in r]
            return float(recs[-1]["loss"]) if recs else None
    return None


def _linprobe(run: Path) -> dict | None:
    path = run / "eval" / "semantics.json"
    return json.loads(path.read_text())["results"]["linprobe"] if path.is_file() else None


def probe(run: Path, l2: float | None = None) -> float | None:
    """The run's linear-probe top-1 at penalty ``l2`` (read from its ``l2_curve``), else at its own choice. Runs
    are compared at one penalty: each one's own one-standard-error choice flips between grid points."""
    rec = _linprobe(run)
    if rec is None:
        return None
    curve = rec.get("l2_curve") or {}
    if l2 is not None:
        for g, top1 in zip(curve.get("grid", []), curve.get("top1", [])):
            if abs(g - l2) <= 1e-9 * max(abs(l2), 1e-30):
                return float(top1)
    return float(rec["top1"])


def shared_l2(out: Path, teachers: list[str]) -> float | None:
    """The one penalty of the start checks: the first teacher's own choice (fixed before any referee is read)."""
    rec = _linprobe(out / f"teacher-s{teachers[0]}") if teachers else None
    return None if rec is None or rec.get("l2") is None else float(rec["l2"])


def check_referees(out: Path, teachers: list[str], referees: list[str], loss_tol: float,
                   probe_tol: float) -> tuple[list[str], bool]:
    lines, ok = [], True
    t_loss = [x for s in teachers if (x := final_loss(out / f"teacher-s{s}")) is not None]
    if len(t_loss) < len(teachers):
        return [f"check: referees pending: the teachers are not trained yet; each referee must reach the teachers' "
                f"final loss within {loss_tol:.0%} (and their probe within {probe_tol:.3f}) before any arm runs"], True
    limit = statistics.fmean(t_loss) * (1 + loss_tol)
    l2 = shared_l2(out, teachers)
    t_probe = [x for s in teachers if (x := probe(out / f"teacher-s{s}", l2)) is not None]
    used = {int(s) for s in (*teachers, *referees)}
    spare = (n for n in range(max(used) + 1, max(used) + 100) if n not in used)
    for s in referees:
        run = out / f"referee-s{s}"
        loss = final_loss(run)
        if loss is None:
            lines.append(f"check: referee-s{s} pending: not trained yet")
            continue
        bad = loss > limit
        text = (f"check: referee-s{s}: final loss {loss:.4f} against the teachers' mean {statistics.fmean(t_loss):.4f}"
                f" (limit {limit:.4f}, +{loss_tol:.0%})")
        p = probe(run, l2)
        if p is not None and len(t_probe) == len(teachers):
            low = statistics.fmean(t_probe) - probe_tol
            at = f" at l2 {l2:g}" if l2 is not None else ""
            text += (f"; probe{at} {p:.3f} against the teachers' mean {statistics.fmean(t_probe):.3f} (at least "
                     f"{low:.3f})")
            bad = bad or p < low
        if bad:
            ok = False
            text += f": FAILS; train a further referee with seed {next(spare)} in its place (REFEREE_SEEDS)"
        else:
            text += ": ok"
        lines.append(text)
    return lines, ok


def check_teachers(out: Path, teachers: list[str], gain: float) -> tuple[list[str], bool]:
    l2 = shared_l2(out, teachers)
    base = probe(out / "untrained", l2)
    lines, ok = [], True
    for s in teachers:
        p = probe(out / f"teacher-s{s}", l2)
        if p is None or base is None:
            lines.append(f"check: teacher-s{s} pending: its linear probe must be at least {gain:.2f} above the "
                         f"untrained encoder's before any arm runs (measured once both are evaluated)")
            continue
        good = p >= base + gain
        ok = ok and good
        lines.append(f"check: teacher-s{s}: linear probe {p:.3f}, untrained encoder {base:.3f} (needs at least "
                     f"{base + gain:.3f}): {'ok' if good else 'FAILS; train the teachers longer or on more images'}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--teachers", required=True)
    ap.add_argument("--referees", required=True)
    ap.add_argument("--loss-tolerance", type=float, default=0.10)
    ap.add_argument("--probe-tolerance", type=float, default=0.03)
    ap.add_argument("--min-probe-gain", type=float)
    args = ap.parse_args(argv)
    teachers, referees = args.teachers.split(), args.referees.split()
    lines, ok = check_referees(args.out, teachers, referees, args.loss_tolerance, args.probe_tolerance)
    if args.min_probe_gain is not None:
        more, ok2 = check_teachers(args.out, teachers, args.min_probe_gain)
        lines, ok = [*lines, *more], ok and ok2
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
