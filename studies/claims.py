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

The rules above read the old single-teacher layout (run folders ``<arm>-s<seed>``, all from one teacher,
scored against it); its committed results keep being read by them. A study of **independent teachers**
(issue 26; run folders ``<arm>-t<teacher>``, each run scored against each referee in
``eval-referee-s<R>/``, comparisons in ``eval-referee-s<R>/vs-<tag>/compare.json``) is read by
:func:`main_teachers`, with these rules, written before its runs:

- **The unit is the teacher.** For each teacher T and each control X of (a) MAE continued, (a+) MAE continued
  for (b)'s training FLOPs and (h) MAE continued with the teacher's distillation on clean images, take
  (b) − X from ``imae compare X b`` (the same pairs, masks and test images). The claim reads the mean over
  teachers with its 95% t-interval (Student's t, n − 1 degrees of freedom; one teacher: cannot tell):
  *holds* when the interval lies above 0, *does not hold* when below, *cannot tell* when it contains 0.
  Each comparison's pair-bootstrap interval is kept beside it: it is **within one teacher** (it resamples
  test pairs, not teachers) and decides nothing.
- **Claim 1 (separability):** the subordinate's un-mixing gain (``gain_sub``) at the headline alpha of the
  comparison (``where.headline_alpha``), read against **each** referee: it holds (does not hold) only if it
  holds (does not hold) against every referee; otherwise cannot tell.
- **Claim 2 (semantics):** the linear probe at the one fixed penalty of the comparison (``linprobe``, its
  ``l2`` shared by both models and chosen on the first referee's validation features, the same for every
  comparison), kNN (both from the comparisons against the first referee: they do not depend on the referee
  otherwise) and NMI (``eval/semantics.json``, per teacher), and where the study fine-tuned (a) and (b)
  (``RUN/finetune/finetune.json``), the fine-tuning top-1 of the last epoch. The verdict reads the linear
  probe on the cls token; kNN, NMI and fine-tuning are reported with their own intervals over teachers, and so
  is the attentive probe (learned queries over all tokens, one setting for both models chosen on the first
  referee's training tokens: ``imae compare --head attentive``), which a cls probe is known to understate for
  masked autoencoders. Every verdict names the probe it rests on (``probe`` in claims.json).
- **Claim 3 (same-class pairing changes the semantics):** (d) p = 0 and (e) p = random against (b) p = 1 per
  teacher (``imae compare b d``, ``imae compare b e``): linear probe (the verdict), attentive probe, kNN and
  NMI. A claim of a *change* holds when the interval of (d) − (b) or of (e) − (b) excludes 0 (either sign);
  otherwise cannot tell (without an equivalence margin, "no change" cannot be shown).
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
    if any(folder.glob("b-imae-t*")):  # a study of independent teachers (issue 26)
        return main_teachers(folder)
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


CONTROLS = {"a": "(a) MAE continued", "ap": "(a+) MAE continued, FLOP-matched",
            "h": "(h) MAE continued + distillation on clean images"}
P_ARMS = {"d": "(d) p = 0", "e": "(e) p = random"}
VERDICT_PROBE = "linear probe on the cls token at the one penalty"
SEMANTICS = ("linprobe", "attentive", "knn", "nmi", "finetune")  # claim 2's measures, in the tables' order
WITHIN = ("per teacher: the comparison's paired-bootstrap 95% interval over test pairs, within one teacher "
          "(it says nothing about teachers and decides nothing)")


def verdict_over_teachers(across: dict) -> str:
    """The rule of a directional claim on the 95% t-interval over teachers."""
    ci = across.get("ci")
    if not ci:
        return "cannot tell (one teacher)"
    return "holds" if ci[0] > 0 else "does not hold" if ci[1] < 0 else "cannot tell"


def against_each(verdicts: list[str]) -> str:
    """Claim 1 over referees: holds (does not hold) only if it holds (does not hold) against each."""
    for v in ("holds", "does not hold"):
        if verdicts and all(x == v for x in verdicts):
            return v
    return "cannot tell"


def change_verdict(intervals: list[dict]) -> str:
    """A claim of a change (either sign): holds when some interval over teachers excludes 0."""
    return "holds" if any(i.get("ci") and (i["ci"][0] > 0 or i["ci"][1] < 0) for i in intervals) else "cannot tell"


def over_teachers(per: dict[str, dict]) -> dict:
    """{teacher: {"a", "b", "diff", "ci"}} -> the per-teacher entries, the t-interval over teachers, the verdict."""
    across = t_interval([v["diff"] for v in per.values()]) if per else {"n": 0, "mean": float("nan"), "ci": None}
    return {"per_teacher": {t: {"a": v.get("a"), "b": v.get("b"), "diff": v["diff"], "ci_within_teacher": v.get("ci")}
                            for t, v in per.items()},
            "across_teachers": across, "verdict": verdict_over_teachers(across)}


def _compare(run: Path, referee: str, tag: str) -> dict | None:
    res = _results(run / f"eval-referee-s{referee}" / f"vs-{tag}" / "compare.json")
    return res["metrics"] if res else None


def _arm(folder: Path, tag: str, teacher: str) -> Path | None:
    return next(iter(sorted(folder.glob(f"{tag}-*-t{teacher}"))), None)


def _nmi(run: Path | None) -> float | None:
    sem = _results(run / "eval" / "semantics.json") if run else None
    return sem["nmi"] if sem else None


def _finetune(run: Path | None) -> float | None:
    """The last epoch's test top-1 of the run's fine-tune (``RUN/finetune/finetune.json``), if it has one."""
    res = _results(run / "finetune" / "finetune.json") if run else None
    return res["final_top1"] if res else None


def _nmi_diffs(folder: Path, teachers: list[str], b_tag: str, a_tag: str, read=_nmi) -> dict[str, dict]:
    """{teacher: {"a", "b", "diff"}} of a per-run number (NMI from semantics.json, or ``read``; no interval
    within a teacher) of B minus A."""
    out = {}
    for t in teachers:
        a, b = read(_arm(folder, a_tag, t)), read(_arm(folder, b_tag, t))
        if a is not None and b is not None:
            out[t] = {"a": a, "b": b, "diff": b - a}
    return out


def main_teachers(folder: Path) -> dict:
    """The claims of a study of independent teachers (the rules in this module's docstring)."""
    teachers = sorted({p.name.rsplit("-t", 1)[1] for p in folder.glob("b-imae-t*")}, key=int)
    referees = sorted({p.name.split("-s")[-1] for p in folder.glob("b-imae-t*/eval-referee-s*")}, key=int)
    if not teachers or not referees:
        sys.exit(f"error: {folder}: no b-imae-t<teacher>/eval-referee-s<referee>/ results")
    first = referees[0]
    out: dict = {"layout": "independent teachers", "teachers": teachers, "referees": referees, "within": WITHIN}
    heads, l2s = set(), set()

    def per_teacher(metric: str, tag: str, referee: str, key=None, b_tag: str = "b", vs: str | None = None) -> dict:
        per = {}
        for t in teachers:
            run = _arm(folder, b_tag, t)
            m = _compare(run, referee, vs or tag) if run else None
            if not m or metric not in m:
                continue
            if metric.startswith("gain"):
                alpha = f"{float(m.get('where', {}).get('headline_alpha', 0.3)):g}"
                heads.add(alpha)
                entry = m[metric].get(alpha)
            else:
                entry = m[metric]
            if metric == "linprobe" and "l2" in entry:
                l2s.add(entry["l2"])
            if entry:
                per[t] = entry
        return per

    claim1 = {}
    for tag in CONTROLS:
        by_ref = {r: over_teachers(per_teacher("gain_sub", tag, r)) for r in referees}
        claim1[tag] = {"referees": by_ref, "verdict": against_each([v["verdict"] for v in by_ref.values()])}
    out["claim 1"] = {"measure": "gain_sub at the headline alpha", "headline_alpha": sorted(heads), "vs": claim1}
    claim2 = {}
    for tag in CONTROLS:
        c = {"linprobe": over_teachers(per_teacher("linprobe", tag, first)),
             "knn": over_teachers(per_teacher("knn", tag, first)),
             "nmi": over_teachers(_nmi_diffs(folder, teachers, "b", tag))}
        attentive = per_teacher("attentive", tag, first)
        if attentive:
            c["attentive"] = over_teachers(attentive)
        tuned = _nmi_diffs(folder, teachers, "b", tag, read=_finetune)
        if tuned:
            c["finetune"] = over_teachers(tuned)
        c["verdict"], c["probe"] = c["linprobe"]["verdict"], VERDICT_PROBE
        claim2[tag] = c
    out["claim 2"] = {"referee": first, "l2": sorted(l2s), "vs": claim2}
    claim3 = {}
    for tag in P_ARMS:
        claim3[tag] = {"linprobe": over_teachers(per_teacher("linprobe", tag, first, b_tag=tag, vs="b")),
                       "knn": over_teachers(per_teacher("knn", tag, first, b_tag=tag, vs="b")),
                       "nmi": over_teachers(_nmi_diffs(folder, teachers, tag, "b"))}
        attentive = per_teacher("attentive", tag, first, b_tag=tag, vs="b")
        if attentive:
            claim3[tag]["attentive"] = over_teachers(attentive)
    out["claim 3"] = {"referee": first, "minus_b": claim3, "probe": VERDICT_PROBE,
                      "verdict": change_verdict([v["linprobe"]["across_teachers"] for v in claim3.values()])}
    out["claims"] = {"1 separability": {f"vs {CONTROLS[t]}": claim1[t]["verdict"] for t in CONTROLS},
                     "2 semantics": {f"vs {CONTROLS[t]}": claim2[t]["verdict"] for t in CONTROLS},
                     "3 same-class pairing": out["claim 3"]["verdict"]}
    (folder / "claims.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "claims.md").write_text(teachers_markdown(out))
    return out


def _row(name: str, v: dict) -> str:
    def one(t: str, p: dict) -> str:
        ci = p.get("ci_within_teacher")
        return f"t{t}: {p['diff']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")

    per = "; ".join(one(t, p) for t, p in v["per_teacher"].items())
    across = v["across_teachers"]
    mean = _ci(across) if across["n"] else "–"
    return f"| {name} | {mean} | {across['n']} | {per or '–'} | {v['verdict']} |"


def teachers_markdown(out: dict) -> str:
    head = "| measure | mean over teachers [95% t-interval] | teachers | per teacher | verdict |"
    lines = [f"Teachers: {', '.join(out['teachers'])}; referees: {', '.join(out['referees'])}. Each row: (b) i-MAE "
             "minus a control (claims 1, 2) or an arm minus (b) (claim 3), per teacher; the verdict reads the 95% "
             f"t-interval over teachers. Brackets {out['within']}.", ""]
    alpha = ", ".join(out["claim 1"]["headline_alpha"]) or "–"
    lines += [f"## Claim 1: un-mixing gain of the subordinate at alpha {alpha}, against each referee", "",
              head, "| --- | --- | --- | --- | --- |"]
    for tag, c in out["claim 1"]["vs"].items():
        for r, v in c["referees"].items():
            lines.append(_row(f"(b) − {CONTROLS[tag]}, referee s{r}", v))
    l2 = ", ".join(f"{x:g}" for x in out["claim 2"]["l2"]) or "–"
    ref = out["claim 2"]["referee"]
    lines += ["", f"## Claim 2: the linear probe on the cls token at the one penalty l2 = {l2} (chosen on referee "
              f"s{ref}'s validation features; the verdict), the attentive probe at one setting per comparison where "
              "measured, kNN, NMI, and the fine-tuning top-1 of the last epoch where the study fine-tuned", "",
              head, "| --- | --- | --- | --- | --- |"]
    for tag, c in out["claim 2"]["vs"].items():
        for m in SEMANTICS:
            if m in c:
                lines.append(_row(f"{m}: (b) − {CONTROLS[tag]}", c[m]))
    lines += ["", "## Claim 3: (d) and (e) minus (b)", "", head, "| --- | --- | --- | --- | --- |"]
    for tag, c in out["claim 3"]["minus_b"].items():
        for m in SEMANTICS:
            if m in c:
                lines.append(_row(f"{m}: {P_ARMS[tag]} − (b)", c[m]))
    reads = {"1 separability": "un-mixing gain of the subordinate, against each referee",
             "2 semantics": VERDICT_PROBE, "3 same-class pairing": VERDICT_PROBE}
    lines += ["", "| claim | against | verdict | rests on |", "| --- | --- | --- | --- |"]
    for k, v in out["claims"].items():
        lines += ([f"| {k} | {who} | {x} | {reads[k]} |" for who, x in v.items()] if isinstance(v, dict)
                  else [f"| {k} | (b) | {v} | {reads[k]} |"])
    return "\n".join(lines) + "\n"


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
    result = main(Path(sys.argv[1]))
    print(teachers_markdown(result) if "layout" in result else to_markdown(result), end="")
