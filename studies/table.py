#!/usr/bin/env python
"""A study's results table (Markdown) from its collected run folders.

    python studies/table.py studies/digits/results > studies/digits/results/table.md
    python studies/table.py studies/cifar10-cpu/results --ratio 0 > studies/cifar10-cpu/results/table-unmasked.md

Rows: the arms (run folders named ``<arm>-s<seed>``, ``teacher``, ``untrained``), each as the mean over its
seeds ± the half-width of a 95% t-interval across seeds (one seed: the value with its 95% pair-bootstrap
interval in brackets), then the baselines of the first arm's separability result. Columns: token R²(sub)
at alpha 0.1 / 0.3 / 0.45 (the training mask ratio, or ``--ratio`` R, one of the ratios the separability
runs scored, e.g. 0 for unmasked; distillation space; the one reference of the study),
R²(sub) + R²(dom) at 0.3, the own branch maps' R²(sub) at 0.3 (i-MAE arms that distil; without
distillation the maps were never trained on the reference's tokens), the subordinate's class accuracy at
0.3 (at the ratio the separability result's ``classification.ratio`` names, whatever ``--ratio`` is),
linear probe, kNN, NMI and training images/s: the run's fastest epoch, since on a shared machine an
epoch is only ever slowed by other jobs, and the fastest is the least disturbed (an undisturbed epoch
varies by about 10%).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from stats import t_half_width

ALPHAS = ("0.1", "0.3", "0.45")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text())["results"] if path.is_file() else None


def _distils(run: Path) -> bool:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return (cfg.get("imae") or {}).get("distill", True) is not False


def token_block(sep: dict, ratio: str | None) -> dict:
    """The token results of one separability result at ``ratio`` (None: the first, the training ratio)."""
    ratio = sep["ratios"][0] if ratio is None else ratio
    if ratio not in sep["tokens"]:
        sys.exit(f"error: --ratio {ratio}: the separability results scored mask ratios {', '.join(sep['ratios'])}")
    return sep["tokens"][ratio]


def run_values(run: Path, ratio: str | None = None) -> dict[str, tuple[float, list | None]]:
    """{column: (value, pair-bootstrap ci or None)} of one run folder."""
    out: dict[str, tuple[float, list | None]] = {}
    sep = _json(run / "eval" / "separability.json")
    if sep and sep.get("scheme") == "tokens":
        block = token_block(sep, ratio)
        space = "distill" if "distill" in block["encoder"] else "encoder"
        for a in ALPHAS:
            if a in block["encoder"][space]["sub"]:
                e = block["encoder"][space]["sub"][a]
                out[f"r2 {a}"] = (e["r2"], e["ci"])
        if "0.3" in block["encoder"][space]["sum"]:
            e = block["encoder"][space]["sum"]["0.3"]
            out["sum 0.3"] = (e["r2"], e["ci"])
        branch = block.get("branches", {}).get("sub", {}).get("0.3")
        if branch and _distils(run):  # without distillation the branch maps were never trained on these targets
            out["branch 0.3"] = (branch["r2"], branch["ci"])
        cls = (sep.get("classification") or {}).get("encoder", {}).get("0.3")
        if cls:
            out["acc 0.3"] = (cls["sub"]["acc"], cls["sub"]["ci"])
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


COLUMNS = [*(f"r2 {a}" for a in ALPHAS), "sum 0.3", "branch 0.3", "acc 0.3", "linprobe", "knn", "nmi", "img/s"]
HEADER = [*(f"token R²(sub) α={a}" for a in ALPHAS), "R² sum α=0.3", "own branch R²(sub)", "sub class acc. α=0.3",
          "linear probe", "kNN", "NMI", "train img/s"]


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


def main(folder: Path, ratio: str | None = None) -> str:
    arms: dict[str, list[dict]] = {}
    for run in sorted(p.parent for p in folder.glob("*/config.yaml")):
        arm = re.sub(r"-s\d+$", "", run.name)
        arms.setdefault(arm, []).append(run_values(run, ratio))
    lines = ["| arm | seeds | " + " | ".join(HEADER) + " |", "|" + " --- |" * (len(HEADER) + 2)]
    for arm, runs in arms.items():
        cells = [cell([r[c] for r in runs if c in r], c) for c in COLUMNS]
        lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    first = next((p.parent.parent for p in sorted(folder.glob("*/eval/separability.json"))), None)
    sep = _json(first / "eval" / "separability.json") if first else None
    if sep and sep.get("scheme") == "tokens":
        block = token_block(sep, ratio)
        space = "distill" if "distill" in block["encoder"] else "encoder"
        rows = {"superposition": {a: (sep["superposition"][a]["sub"], None) for a in ALPHAS
                                  if a in sep["superposition"]}}
        for name, b in block["baselines"].items():
            values = b[space]["sub"]
            rows[name] = {a: (values[a]["r2"], values[a]["ci"]) for a in ALPHAS if a in values} if "r2" not in values \
                else {a: (values["r2"], values["ci"]) for a in ALPHAS}
        for name, values in rows.items():
            cells = [cell([values[a]], f"r2 {a}") if a in values else "–" for a in ALPHAS]
            lines.append(f"| baseline: {name.replace('_', ' ')} ({first.name}) | | " + " | ".join(cells)
                         + " |" + " – |" * (len(HEADER) - len(ALPHAS)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A study's results table (Markdown) from its collected run folders.")
    parser.add_argument("results", type=Path, help="a study's results folder (studies/<scale>/results)")
    parser.add_argument("--ratio", help="the mask ratio to tabulate (default: the training ratio; 0: unmasked)")
    args = parser.parse_args()
    if not args.results.is_dir():
        parser.exit(2, f"error: {args.results} is not a folder; give a study's results folder "
                       "(studies/<scale>/results)\n")
    print(main(args.results, args.ratio), end="")
