#!/usr/bin/env python
"""Training curves of a study's arms, and whether each arm's loss has flattened.

    python studies/curves.py studies/digits/results      # writes curves.png and plateau.json there

For every run folder (``epochs.jsonl`` or ``log.jsonl``) it plots, per epoch, the distillation loss
(``distill_sub + distill_dom``) of the arms that distil and the total loss of the others. Each curve's
plateau test, the one issue 11 sets: the relative change of that loss over the last 10% of the epochs,
``|L[E] - L[E - n]| / L[E - n]`` with ``n = ceil(0.1 E)`` epochs and ``L`` the epoch means, must be under
2%. ``plateau.json`` lists per run the loss used, E, n, the two values, the change and ``flat``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from imae.viz.report import epoch_records

THRESHOLD = 0.02


def curve(run: Path) -> tuple[str, list[int], list[float]]:
    """(loss name, epochs, values) of one run: the distillation loss where it is logged, else ``loss``."""
    recs = epoch_records(run)
    if recs and all("distill_sub" in r for r in recs) and any(r["distill_sub"] for r in recs):
        return "distill_sub + distill_dom", [r["epoch"] for r in recs], \
            [r["distill_sub"] + r.get("distill_dom", 0.0) for r in recs]
    return "loss", [r["epoch"] for r in recs if "loss" in r], [r["loss"] for r in recs if "loss" in r]


def plateau(values: list[float]) -> dict:
    e = len(values)
    n = max(1, math.ceil(0.1 * e))
    if e <= n:
        return {"epochs": e, "window": n, "flat": None}
    before, last = values[e - 1 - n], values[-1]
    change = abs(last - before) / abs(before)
    return {"epochs": e, "window": n, "before": before, "last": last, "rel_change": change,
            "flat": change < THRESHOLD}


def main(folder: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({p.parent for p in [*folder.glob("*/epochs.jsonl"), *folder.glob("*/log.jsonl")]})
    out, series = {}, {}
    for run in runs:
        name, xs, ys = curve(run)
        if ys:
            out[run.name] = {"loss": name, **plateau(ys)}
            series[run.name] = (name, xs, ys)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run, (name, xs, ys) in series.items():
        ax = axes[0] if name.startswith("distill") else axes[1]
        arm = re.sub(r"-[st]\d+$", "", run)
        flat = out[run]["flat"]
        ax.plot(xs, ys, lw=1.2, label=f"{run} ({'flat' if flat else 'not flat' if flat is False else 'short'})",
                color=f"C{sorted({re.sub(r'-[st][0-9]+$', '', r) for r in series}).index(arm) % 10}")
    axes[0].set_title("distillation loss (distill_sub + distill_dom)")
    axes[1].set_title("total loss (arms without distillation)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    fig.suptitle(f"{folder}: flat = under {THRESHOLD:.0%} relative change over the last 10% of epochs", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=110)
    (folder / "plateau.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for run, p in main(Path(sys.argv[1])).items():
        change = f"{p['rel_change']:.2%}" if "rel_change" in p else "-"
        print(f"{run:28s} {p['loss']:26s} last {p['window']} of {p['epochs']} epochs: {change}  flat={p['flat']}")
