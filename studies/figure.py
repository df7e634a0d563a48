#!/usr/bin/env python
"""A study's headline figure: token R²(sub) against alpha per arm, with intervals and the baselines.

A study of independent teachers (run folders ``<arm>-t<teacher>``, issue 26) gets :func:`main_teachers`'s
figure instead: the un-mixing gain against alpha per arm and each arm minus (a), with the 95% t-interval over
teachers, one row per referee. The rest of this docstring is the old single-teacher layout's figure.

    python studies/figure.py studies/digits/results       # writes headline.png there

Left: one line per arm (run folders ``<arm>-s<seed>``; plus ``untrained``): the mean over its seeds of
token R²(sub) at the headline mask ratio and space of its separability results, read through
:class:`imae.eval.separability_result.SeparabilityResult` (the training ratio; the reference's distillation
space where it has one), with a band: the 95% t-interval across seeds where an arm has several, else the
run's 95% pair-bootstrap interval. Dashed lines: the baselines of the first arm's result on the same pairs
(superposition, pixels, reference on the mixture, partner only: the second term of that arm's un-mixing gain,
which ``table.py`` tabulates per arm).

Right: the same means minus arm (a)'s (``a-mae-continued``, the compute-matched MAE), so that arms a few
thousandths apart can be told apart; the reference on the mixture as a dashed line. The band on (b) is
claim 1's interval (``claims.py``): the 95% t-interval over seeds of the paired per-seed differences of
``imae compare``; the other arms have one seed and no paired comparison, so they are drawn without one.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from stats import t_half_width
from table import separability

from imae.eval.separability_result import SeparabilityResult


def _interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval over teachers (one value: no interval)."""
    m = statistics.fmean(xs)
    h = t_half_width(xs) if len(xs) > 1 else 0.0
    return m, m - h, m + h


def teacher_curves(folder: Path, referee: str) -> tuple[dict, dict]:
    """A study of independent teachers, scored against ``referee``: ({arm: {alpha: (mean, lo, hi)}} of the
    subordinate's un-mixing gain over teachers, {arm: {alpha: (mean, lo, hi)}} of the arm minus (a) of the same
    teacher), each with the 95% t-interval over teachers."""
    runs: dict[str, dict[str, SeparabilityResult]] = {}
    for path in sorted(folder.glob(f"*-t*/eval-referee-s{referee}/separability.json")):
        run = path.parent.parent
        arm, teacher = run.name.rsplit("-t", 1)
        res = separability(run, referee)
        if res:
            runs.setdefault(arm, {})[teacher] = res
    gains, minus_a = {}, {}
    base = runs.get("a-mae-continued", {})
    for arm, by_teacher in runs.items():
        alphas = next(iter(by_teacher.values())).alphas
        per = {a: {t: g["gain"] for t, r in by_teacher.items() if (g := r.gain("sub", a))} for a in alphas}
        gains[arm] = {a: _interval(list(v.values())) for a, v in per.items() if v}
        if arm != "a-mae-continued" and base:
            diffs = {a: [v[t] - g["gain"] for t in v if t in base and (g := base[t].gain("sub", a))]
                     for a, v in per.items()}
            minus_a[arm] = {a: _interval(d) for a, d in diffs.items() if d}
    return gains, minus_a


def main_teachers(folder: Path) -> Path:
    """The headline figure of a study of independent teachers: one row per referee; left, the subordinate's
    un-mixing gain against alpha per arm (mean over teachers, band: the 95% t-interval over teachers); right,
    each arm minus (a) MAE continued of the same teacher, with the same interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    referees = sorted({p.name.split("-s")[-1] for p in folder.glob("*-t*/eval-referee-s*")}, key=int)
    fig, axes = plt.subplots(len(referees), 2, figsize=(12, 4.2 * len(referees)), squeeze=False)
    for (ax, dax), r in zip(axes, referees):
        gains, minus_a = teacher_curves(folder, r)
        for i, (arm, curve) in enumerate(sorted(gains.items())):
            color = f"C{i % 10}"
            xs = [float(a) for a in curve]
            mean, lo, hi = zip(*curve.values())
            ax.plot(xs, mean, "-", marker="o", ms=3, color=color, label=arm)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
            if arm in minus_a and minus_a[arm]:
                xs = [float(a) for a in minus_a[arm]]
                mean, lo, hi = zip(*minus_a[arm].values())
                dax.plot(xs, mean, "-", marker="o", ms=3, color=color, label=f"{arm} − a")
                dax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        dax.axhline(0, color="k", lw=1)
        ax.set_title(f"gain(sub) against referee s{r}; bands: 95% t-interval over teachers", fontsize=9)
        dax.set_title(f"minus (a) MAE continued of the same teacher; referee s{r}", fontsize=9)
        for a in (ax, dax):
            a.set_xlabel("α (weight of the subordinate)")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
        ax.set_ylabel("un-mixing gain R²(mixture) − R²(partner alone)")
    fig.tight_layout()
    out = folder / "headline.png"
    fig.savefig(out, dpi=110)
    return out


def main(folder: Path) -> Path:
    if any(folder.glob("b-imae-t*")):  # a study of independent teachers (issue 26)
        return main_teachers(folder)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms: dict[str, list[Path]] = {}
    for run in sorted(p.parent.parent for p in folder.glob("*/eval/separability.json")):
        arms.setdefault(re.sub(r"-s\d+$", "", run.name), []).append(run)
    fig, (ax, dax) = plt.subplots(1, 2, figsize=(12, 4.6))
    first: SeparabilityResult | None = None
    means: dict[str, tuple[str, dict[str, float]]] = {}  # arm -> (its colour, {alpha: mean})
    for i, (arm, runs) in enumerate(arms.items()):
        results = [r for r in map(separability, runs) if r]
        if not results:
            continue
        first = first or results[0]
        alphas = [a for a in results[0].alphas if results[0].r2("sub", a)]
        xs = [float(a) for a in alphas]
        per = [[r.r2("sub", a) for r in results] for a in alphas]
        mean = [statistics.fmean(e["r2"] for e in es) for es in per]
        if len(results) > 1:
            half = [t_half_width([e["r2"] for e in es]) for es in per]
            lo, hi = [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)]
        else:
            lo, hi = [es[0]["ci"][0] for es in per], [es[0]["ci"][1] for es in per]
        color = f"C{i % 10}"
        style = "-" if arm != "untrained" else ":"
        ax.plot(xs, mean, style, marker="o", ms=3, color=color, label=f"{arm} ({len(results)} seed(s))")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
        means[arm] = (color, dict(zip(alphas, mean)))
    if first and "a-mae-continued" in means:
        _differences(dax, folder, means, first)
    else:
        dax.set_visible(False)
    if first:
        alphas = first.alphas
        xs = [float(a) for a in alphas]
        ax.plot(xs, [first.superposition("sub", a) for a in alphas], "k--", lw=1, label="superposition")
        partner = first.partner("sub")
        for name, c in (("pixels", "0.5"), ("reference_on_mixture", "tab:olive"), ("partner_only", "tab:pink")):
            base = [partner] * len(alphas) if name == "partner_only" else \
                [first.r2("sub", a, predictor=name) for a in alphas]
            if None in base:
                continue
            ax.plot(xs, [e["r2"] for e in base], "--", color=c, lw=1, label=name.replace("_", " "))
        ax.set_title(f"token R²(sub), mask ratio {first.head['ratio']}, {first.head['space']} space; "
                     "bands: 95% intervals", fontsize=9)
    ax.set_xlabel("α (weight of the subordinate)")
    ax.set_ylabel("token R² of the subordinate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = folder / "headline.png"
    fig.savefig(out, dpi=110)
    return out


def _differences(ax, folder: Path, means: dict[str, tuple[str, dict[str, float]]], first: SeparabilityResult) -> None:
    """Each arm's mean token R²(sub) minus arm (a)'s, per alpha; (b) with claim 1's interval."""
    base_color, base = means["a-mae-continued"]
    for arm, (color, mean) in means.items():
        if arm in ("a-mae-continued", "untrained"):
            continue
        alphas = [a for a in mean if a in base]
        xs = [float(a) for a in alphas]
        ax.plot(xs, [mean[a] - base[a] for a in alphas], "-", marker="o", ms=3, color=color, label=arm)
        if arm == "b-imae":
            compares = _compares(folder)
            diffs = [[c["token_r2_sub"][a]["diff"] for c in compares] for a in alphas]
            if diffs and len(diffs[0]) > 1:
                half = [t_half_width(d) for d in diffs]
                centre = [statistics.fmean(d) for d in diffs]
                ax.fill_between(xs, [c - h for c, h in zip(centre, half)], [c + h for c, h in zip(centre, half)],
                                color=color, alpha=0.25, label=f"b − a: 95% interval over {len(diffs[0])} seeds")
    ref = {a: e["r2"] for a in base if (e := first.r2("sub", a, predictor="reference_on_mixture"))}
    if ref:
        ax.plot([float(a) for a in ref], [ref[a] - base[a] for a in ref], "--", color="tab:olive", lw=1,
                label="reference on mixture")
    ax.axhline(0, color=base_color, lw=1, label="a-mae-continued (0)")
    ax.set_title("minus (a) MAE continued, mean over its seeds", fontsize=9)
    ax.set_xlabel("α (weight of the subordinate)")
    ax.set_ylabel("Δ token R²(sub)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _compares(folder: Path) -> list[dict]:
    """The ``imae compare`` metrics of (b) against (a), one per seed that has them."""
    return [json.loads(p.read_text())["results"]["metrics"] for p in sorted(folder.glob("b-imae-s*/eval/compare.json"))]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1])))
