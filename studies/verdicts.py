#!/usr/bin/env python
"""The README's table of verdicts: each claim, each scale, the mean over teachers with its 95% t-interval.

    python studies/verdicts.py                   # prints the table from each scale's results/claims.json
    python studies/verdicts.py --write README.md  # replaces the table between the README's verdict markers

Reads the claims each study wrote (``studies/claims.py``); a scale without them yet (still running) is shown as
such. Every number is (b) i-MAE minus the control (claims 1, 2) or the arm minus (b) (claim 3), its mean over
teachers [95% t-interval over teachers], and the verdict the study's rule gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import _ci  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALES = {"digits": "digits (16 px)", "cifar10-cpu": "CIFAR-10, CPU scale"}
BEGIN, END = "<!-- verdicts: begin (python studies/verdicts.py --write README.md) -->", "<!-- verdicts: end -->"
CONTROLS = {"a": "(a) MAE continued", "ap": "(a+) MAE, FLOP-matched", "h": "(h) MAE + clean distillation"}
P_ARMS = {"d": "(d) p = 0", "e": "(e) p = random"}


def _load(folder: Path) -> dict | None:
    path = folder / "claims.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _interval(entry: dict) -> str:
    across = entry["across_teachers"]
    return _ci(across) if across.get("n") else "–"  # claims.md's format


def cells(claims: dict | None) -> dict[tuple[str, str], str]:
    """{(claim, row): the cell} of one scale."""
    if claims is None:
        return {}
    out = {}
    for tag in CONTROLS:
        one = claims["claim 1"]["vs"][tag]
        per_ref = "; ".join(f"s{r}: {_interval(v)}" for r, v in one["referees"].items())
        out[("1", tag)] = f"{per_ref} **{one['verdict']}**"
        two = claims["claim 2"]["vs"][tag]
        out[("2", tag)] = f"{_interval(two['linprobe'])} **{two['verdict']}**"
    for tag in P_ARMS:
        three = claims["claim 3"]["minus_b"][tag]["linprobe"]
        out[("3", tag)] = f"{_interval(three)} ({three['verdict']})"
    out[("3", "all")] = f"**{claims['claim 3']['verdict']}**"
    return out


def table(results: dict[str, Path]) -> str:
    loaded = {scale: _load(folder) for scale, folder in results.items()}
    per = {scale: cells(c) for scale, c in loaded.items()}
    head = ["claim (measure)", "(b) i-MAE against"]
    for scale, c in loaded.items():
        n = f"{len(c['teachers'])} teachers, referees s{', s'.join(c['referees'])}" if c else "running"
        head.append(f"{SCALES.get(scale, scale)} ({n})")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def row(claim: str, label: str, key: tuple[str, str]) -> None:
        vals = [per[s].get(key, "running" if loaded[s] is None else "–") for s in results]
        lines.append(f"| {claim} | {label} | " + " | ".join(vals) + " |")

    for tag, name in CONTROLS.items():
        row("1. more linearly separable (un-mixing gain, each referee)" if tag == "a" else "", name, ("1", tag))
    for tag, name in CONTROLS.items():
        row("2. more semantics (linear probe, cls token, one penalty)" if tag == "a" else "", name, ("2", tag))
    for tag, name in P_ARMS.items():
        row("3. p changes the semantics (arm − (b), linear probe)" if tag == "d" else "", name, ("3", tag))
    row("", "either interval excludes 0", ("3", "all"))
    return "\n".join(lines) + "\n"


def write(readme: Path, text: str) -> None:
    body = readme.read_text()
    if BEGIN not in body or END not in body:
        sys.exit(f"error: {readme} has no verdict markers ({BEGIN} ... {END}); add them where the table goes")
    start, end = body.index(BEGIN) + len(BEGIN), body.index(END)
    readme.write_text(body[:start] + "\n" + text + body[end:])


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path, help="the README whose table to replace")
    args = ap.parse_args(argv)
    text = table({scale: ROOT / "studies" / scale / "results" for scale in SCALES})
    if args.write:
        write(args.write, text)
    else:
        print(text, end="")
    return text


if __name__ == "__main__":
    main()
