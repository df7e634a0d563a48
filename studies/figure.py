#!/usr/bin/env python
"""A study's headline figure: the subordinate's un-mixing gain against alpha per arm, with intervals over teachers.

    python studies/figure.py studies/digits/results       # writes headline.png there

A study of independent teachers (run folders ``<arm>-t<teacher>``, issue 26), one row per referee. Left: each
arm's un-mixing gain of the subordinate (R² from the mixture minus R² from the partner image alone, read
through :class:`imae.eval.separability_result.SeparabilityResult` against that referee) at every scored alpha,
the mean over teachers with the 95% t-interval over teachers as a band. Right: each arm minus (a) MAE continued
of the same teacher, with the same interval; (b)'s band at the headline alpha is claim 1's interval
(``claims.py``).
"""

from __future__ import annotations

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


def main(folder: Path) -> Path:
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1])))
