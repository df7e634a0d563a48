#!/usr/bin/env python
"""The paper's three claims read against a study's collected results, by rules fixed before any arm was run.

    python studies/claims.py studies/digits/results      # writes claims.json and claims.md there

1. **i-MAE's latents are more linearly separable than MAE's.** Per seed, ``imae compare`` gives (b) i-MAE
   minus (a) MAE continued in token R²(sub) at alpha 0.1 / 0.3 / 0.45 with a paired-bootstrap 95% interval;
   across seeds the mean difference gets a 95% t-interval. The verdict reads the headline alpha of (b)'s
   separability result (``SeparabilityResult.head``: 0.3).
2. **They carry more semantics.** The same for linear-probe and kNN top-1 (compare.json) and NMI
   (semantics.json, across seeds only). The verdict reads the linear probe.
3. **Same-class pairing (p) changes the semantics learned.** (d) p = 0 and (e) p = random against (b)
   p = 1: the linear probe of each against the 95% prediction interval of one more seed of (b)
   (mean +- t * sd * sqrt(1 + 1/n) over b's seeds). With one seed of (d) and (e) this is the only honest test.

Verdict rule for 1 and 2: *holds* when the interval of the difference lies above 0, *does not hold* when
it lies below 0, *cannot tell* when it contains 0. For 3: *holds* when (d) or (e) falls outside b's
prediction interval, else *cannot tell at this scale*.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from stats import t95, t_half_width
from table import ALPHAS, separability


def t_interval(xs: list[float]) -> dict:
    n = len(xs)
    mean = statistics.fmean(xs)
    if n < 2:
        return {"n": n, "mean": mean, "ci": None}
    half = t_half_width(xs)
    return {"n": n, "mean": mean, "sd": statistics.stdev(xs), "ci": [mean - half, mean + half]}


def verdict(ci: list[float] | None) -> str:
    if not ci:
        return "cannot tell (one seed)"
    return "holds" if ci[0] > 0 else "does not hold" if ci[1] < 0 else "cannot tell"


def _results(path: Path) -> dict | None:
    return json.loads(path.read_text())["results"] if path.is_file() else None


def _headline_alpha(folder: Path, seeds: list[str]) -> str:
    """The alpha claim 1 is read at: the headline alpha of (b)'s separability result."""
    for s in seeds:
        res = separability(folder / f"b-imae-s{s}")
        if res:
            return res.head["alpha"]
    sys.exit(f"error: {folder}: no b-imae-s<seed> run with a token-level eval/separability.json")


def main(folder: Path) -> dict:
    seeds = sorted(p.name.rsplit("-s", 1)[1] for p in folder.glob("b-imae-s*")
                   if (p / "eval" / "compare.json").is_file())
    compares = {s: _results(folder / f"b-imae-s{s}" / "eval" / "compare.json")["metrics"] for s in seeds}
    out: dict = {"seeds": seeds}

    def diffs(metric: str, key: str | None) -> dict:
        per = {s: (compares[s][metric][key] if key else compares[s][metric]) for s in seeds}
        across = t_interval([v["diff"] for v in per.values()])
        return {"per_seed": {s: {"a": v["a"], "b": v["b"], "diff": v["diff"], "ci": v["ci"]} for s, v in per.items()},
                "across_seeds": across, "verdict": verdict(across["ci"])}

    head = _headline_alpha(folder, seeds)
    out["separability"] = {f"token_r2_sub@{a}": diffs("token_r2_sub", a)
                           for a in (ALPHAS if head in ALPHAS else (*ALPHAS, head))}
    out["separability"]["space"] = compares[seeds[0]]["token_r2_sub_space"] if seeds else None
    out["semantics"] = {"linprobe": diffs("linprobe", None), "knn": diffs("knn", None)}
    nmi = {s: (_results(folder / f"b-imae-s{s}" / "eval" / "semantics.json")["nmi"]
               - _results(folder / f"a-mae-continued-s{s}" / "eval" / "semantics.json")["nmi"]) for s in seeds}
    out["semantics"]["nmi"] = {"per_seed": nmi, "across_seeds": t_interval(list(nmi.values())),
                               "verdict": verdict(t_interval(list(nmi.values()))["ci"])}
    out["claims"] = {"1 separability": out["separability"][f"token_r2_sub@{head}"]["verdict"],
                     "2 semantics": out["semantics"]["linprobe"]["verdict"]}

    probe = {s: _results(folder / f"b-imae-s{s}" / "eval" / "semantics.json")["linprobe"]["top1"] for s in seeds}
    b = t_interval(list(probe.values()))
    if b["ci"]:
        half = t95(b["n"] - 1) * b["sd"] * (1 + 1 / b["n"]) ** 0.5
        b["prediction_interval"] = [b["mean"] - half, b["mean"] + half]
    arms = {}
    for tag, name in (("d", "imae-p0"), ("e", "imae-prandom")):
        runs = sorted(folder.glob(f"{tag}-{name}-s*"))
        vals = [_results(r / "eval" / "semantics.json")["linprobe"]["top1"] for r in runs
                if (r / "eval" / "semantics.json").is_file()]
        if vals:
            v = statistics.fmean(vals)
            pi = b.get("prediction_interval")
            arms[name] = {"linprobe": v, "seeds": len(vals), "minus_b": v - b["mean"],
                          "outside_b": bool(pi and not pi[0] <= v <= pi[1])}
    out["p"] = {"b_linprobe": b, "arms": arms}
    out["claims"]["3 same-class pairing"] = ("holds" if any(a["outside_b"] for a in arms.values())
                                             else "cannot tell at this scale")
    (folder / "claims.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "claims.md").write_text(to_markdown(out))
    return out


def _ci(d: dict) -> str:
    ci = d.get("ci")
    return f"{d['mean']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{d['mean']:+.3f}"


def to_markdown(out: dict) -> str:
    lines = [f"Seeds: {', '.join(out['seeds'])}. B - A = i-MAE (b) minus MAE continued (a); mean over seeds "
             "[95% t-interval]; per seed the paired-bootstrap 95% interval.", "",
             "| measure | mean B - A over seeds | per seed | verdict |", "| --- | --- | --- | --- |"]
    rows = [*((k, v) for k, v in out["separability"].items() if k != "space"),
            *(("linear probe" if k == "linprobe" else k, v) for k, v in out["semantics"].items())]
    for name, v in rows:
        per = "; ".join(f"s{s}: {p['diff']:+.3f}" + (f" [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]" if isinstance(p, dict)
                                                      and p.get("ci") else "")
                        for s, p in ((s, p if isinstance(p, dict) else {"diff": p}) for s, p in v["per_seed"].items()))
        lines.append(f"| {name} | {_ci(v['across_seeds'])} | {per} | {v['verdict']} |")
    b = out["p"]["b_linprobe"]
    pi = b.get("prediction_interval")
    lines += ["", f"Same-class pairing: linear probe of (b) p = 1 over {b['n']} seeds {b['mean']:.3f}"
              + (f", 95% prediction interval for one more seed [{pi[0]:.3f}, {pi[1]:.3f}]" if pi else ""), ""]
    for name, a in out["p"]["arms"].items():
        lines.append(f"- {name}: {a['linprobe']:.3f} ({a['seeds']} seed(s); {a['minus_b']:+.3f} from b; "
                     f"{'outside' if a['outside_b'] else 'inside'} the interval)")
    lines += ["", "| claim | at this scale |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in out["claims"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(to_markdown(main(Path(sys.argv[1]))), end="")
