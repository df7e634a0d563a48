#!/usr/bin/env python
"""A study's results table (Markdown) from its collected run folders.

    python studies/table.py studies/digits/results --referee 4 --write studies/digits/results/table-referee-s4.md
    python studies/table.py studies/cifar10-cpu/results --referee 3 --ratio 0   # unmasked

Every separability number is read through :class:`imae.eval.separability_result.SeparabilityResult` (its
headline alpha, mask ratio and space). Rows: the arms (run folders named ``<arm>-t<teacher>``, ``teacher-s<T>``,
``untrained``; each referee its own row), each as the mean over its teachers ± the half-width of a 95%
t-interval over teachers (one run: the value with its 95% pair-bootstrap interval in brackets), then the
baselines of the first arm's separability result. Columns: token R²(sub) at alpha 0.1 / 0.3 / 0.45 (the
headline mask ratio, the training one, or ``--ratio`` R, one of the ratios the separability runs scored, e.g. 0
for unmasked; the headline space; against ``--referee``); the subordinate's un-mixing gain at the headline
alpha (R²(sub) from the mixture minus R²(sub) from the partner image alone); the subordinate's class accuracy
at the headline alpha on all test pairs (at the ratio the separability result's ``classification.ratio``
names, whatever ``--ratio`` is); linear probe (at the run's own penalty, ``eval/semantics.json``: the claims
read ``imae compare``'s one penalty instead), kNN, NMI and training images/s: the run's fastest epoch, since on
a shared machine an epoch is only ever slowed by other jobs, and the fastest is the least disturbed (an
undisturbed epoch varies by about 10%). There is no R² sum column (a sum above 1 is not evidence of
un-mixing) and no column of the i-MAE's own branch maps: against a referee they read a distillation space they
were never fitted to.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from stats import t_half_width

from imae.eval.separability_result import PREDICTORS, SeparabilityResult

ALPHAS = ("0.1", "0.3", "0.45")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text())["results"] if path.is_file() else None


def separability(run: Path, referee: str) -> SeparabilityResult | None:
    """The separability result of one run folder against a referee (``RUN/eval-referee-s<SEED>/``; None without
    one, or without token-level scores)."""
    results = _json(run / f"eval-referee-s{referee}" / "separability.json")
    try:
        return SeparabilityResult.from_json(results) if results else None
    except ValueError:  # an older, not token-level result
        return None


def checked_ratio(res: SeparabilityResult, ratio: str | None) -> str | None:
    """``ratio`` when the result scored it (None, the headline ratio, always); else exit with the scored ones."""
    if ratio is not None and ratio not in res.ratios:
        sys.exit(f"error: --ratio {ratio}: the separability results scored mask ratios {', '.join(res.ratios)}")
    return ratio


def run_values(run: Path, res: SeparabilityResult | None,
               ratio: str | None = None) -> dict[str, tuple[float, list | None]]:
    """{column: (value, pair-bootstrap ci or None)} of one run folder; ``res``: its separability result against
    the table's referee (None without one)."""
    out: dict[str, tuple[float, list | None]] = {}
    if res:
        ratio = checked_ratio(res, ratio)
        for a in ALPHAS:
            e = res.r2("sub", a, ratio=ratio)
            if e:
                out[f"r2 {a}"] = (e["r2"], e["ci"])
        gain = res.gain("sub", ratio=ratio)
        if gain:
            out["gain"] = (gain["gain"], gain["ci"])
        acc = res.class_accuracy("sub", subset=None)
        if acc:
            out["acc"] = (acc["acc"], acc["ci"])
    sem = _json(run / "eval" / "semantics.json")
    if sem:
        out["linprobe"] = (sem["linprobe"]["top1"], None)
        out["knn"] = (sem["knn"]["top1"], None)
        out["nmi"] = (sem["nmi"], None)
    log = run / "epochs.jsonl"
    if log.is_file():
        speeds = [json.loads(line).get("images_per_s") for line in log.read_text().splitlines() if line.strip()]
        speeds = [s for s in speeds if isinstance(s, (int, float))]
        if speeds:
            out["img/s"] = (max(speeds), None)
    return out


COLUMNS = [*(f"r2 {a}" for a in ALPHAS), "gain", "acc", "linprobe", "knn", "nmi", "img/s"]


def header(alpha: str) -> list[str]:
    """The column titles; ``alpha``: the headline alpha the gain and accuracy columns are read at."""
    return [*(f"token R²(sub) α={a}" for a in ALPHAS), f"gain(sub) α={alpha}",
            f"sub class acc. α={alpha}", "linear probe", "kNN", "NMI", "train img/s"]


def cell(values: list[tuple[float, list | None]], column: str) -> str:
    if not values:
        return "–"
    digits = 0 if column == "img/s" else 3
    if len(values) == 1:
        v, ci = values[0]
        return f"{v:.{digits}f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")
    xs = [v for v, _ in values]
    half = t_half_width(xs)
    return f"{statistics.fmean(xs):.{digits}f} ± {half:.{digits}f}"


def baseline_rows(res: SeparabilityResult, ratio: str | None) -> dict[str, dict[str, tuple[float, list | None]]]:
    """{baseline: {column: (value, ci)}} of one separability result: the superposition line, the trivial
    predictors on the mixture (with their gain where the result has it) and the partner image alone."""
    rows = {"superposition": {f"r2 {a}": (res.superposition("sub", a), None) for a in ALPHAS if a in res.alphas}}
    for name in PREDICTORS[1:]:
        values = {f"r2 {a}": (e["r2"], e["ci"]) for a in ALPHAS
                  if (e := res.r2("sub", a, predictor=name, ratio=ratio))}
        gain = res.gain("sub", predictor=name, ratio=ratio)
        if gain:
            values["gain"] = (gain["gain"], gain["ci"])
        if values:
            rows[name] = values
    partner = res.partner("sub", ratio=ratio)
    if partner:
        rows["partner_only"] = {f"r2 {a}": (partner["r2"], partner["ci"]) for a in ALPHAS}
    return rows


def main(folder: Path, referee: str, ratio: str | None = None) -> str:
    """The table against ``referee`` (the referee seed whose scores it shows); the arms of all teachers pooled:
    mean ± the half-width of the 95% t-interval over teachers."""
    arms: dict[str, list[dict]] = {}
    scored = {}  # run -> its separability result against the referee, each read once
    for run in sorted(p.parent for p in folder.glob("*/config.yaml")):
        if res := separability(run, referee):
            scored[run] = res
        # a referee is one model, not a replicate: each keeps its own row (one may have failed its start check)
        arm = run.name if run.name.startswith("referee-") else re.sub(r"-[st]\d+$", "", run.name)
        arms.setdefault(arm, []).append(run_values(run, res, ratio))
    if not scored:
        found = sorted({p.name.removeprefix("eval-referee-s") for p in folder.glob("*/eval-referee-s*")}, key=int)
        sys.exit(f"error: {folder}: no run has separability scores against referee {referee}; "
                 f"give --referee one of: {', '.join(found) or 'none (no eval-referee-s<SEED>/ folder)'}")
    first, res = next(iter(scored.items()))
    titles = header(res.head["alpha"])
    lines = ["| arm | teachers | " + " | ".join(titles) + " |", "|" + " --- |" * (len(titles) + 2)]
    for arm, runs in arms.items():
        cells = [cell([r[c] for r in runs if c in r], c) for c in COLUMNS]
        lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    for name, values in baseline_rows(res, checked_ratio(res, ratio)).items():
        cells = [cell([values[c]], c) if c in values else "–" for c in COLUMNS]
        lines.append(f"| baseline: {name.replace('_', ' ')} ({first.name}) | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A study's results table (Markdown) from its collected run folders.")
    parser.add_argument("results", type=Path, help="a study's results folder (studies/<scale>/results)")
    parser.add_argument("--ratio", help="the mask ratio to tabulate (default: the training ratio; 0: unmasked)")
    parser.add_argument("--referee", required=True,
                        help="the referee seed whose scores to tabulate (each run's eval-referee-s<SEED>/)")
    parser.add_argument("--write", type=Path, help="write the table to this file instead of printing it")
    args = parser.parse_args()
    if not args.results.is_dir():
        parser.exit(2, f"error: {args.results} is not a folder; give a study's results folder "
                       "(studies/<scale>/results)\n")
    text = main(args.results, args.referee, args.ratio)
    if args.write:
        args.write.write_text(text)
    else:
        print(text, end="")
