#!/usr/bin/env python
"""The paper's three claims read against a study's collected results, by rules fixed before any arm was run.

    python studies/claims.py studies/digits/results      # writes claims.json and claims.md there

A study of **independent teachers** (issue 26): run folders ``<arm>-t<teacher>``, each run scored against each
referee in ``eval-referee-s<R>/``, comparisons in ``eval-referee-s<R>/vs-<tag>/compare.json``. The rules,
written before its runs:

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
  otherwise cannot tell (without an equivalence margin, "no change" cannot be shown). Each measure of claim 3
  is labelled by the same rule (a measure whose interval excludes 0 shows a change: "holds").
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from stats import t_half_width


def t_interval(xs: list[float]) -> dict:
    n = len(xs)
    mean = statistics.fmean(xs)
    if n < 2:
        return {"n": n, "mean": mean, "ci": None}
    half = t_half_width(xs)
    return {"n": n, "mean": mean, "sd": statistics.stdev(xs), "ci": [mean - half, mean + half]}


def _results(path: Path) -> dict | None:
    return json.loads(path.read_text())["results"] if path.is_file() else None


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


def change_over_teachers(across: dict) -> str:
    """The rule of a claim of a change (claim 3) for one measure's interval over teachers."""
    return change_verdict([across])


def over_teachers(per: dict[str, dict], rule=verdict_over_teachers) -> dict:
    """{teacher: {"a", "b", "diff", "ci"}} -> the per-teacher entries, the t-interval over teachers, the verdict
    by ``rule`` (directional; :func:`change_over_teachers` for claim 3)."""
    across = t_interval([v["diff"] for v in per.values()]) if per else {"n": 0, "mean": float("nan"), "ci": None}
    return {"per_teacher": {t: {"a": v.get("a"), "b": v.get("b"), "diff": v["diff"], "ci_within_teacher": v.get("ci")}
                            for t, v in per.items()},
            "across_teachers": across, "verdict": rule(across)}


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


def main(folder: Path) -> dict:
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
        change = change_over_teachers  # a claim of a change, either sign: each measure by that rule
        claim3[tag] = {"linprobe": over_teachers(per_teacher("linprobe", tag, first, b_tag=tag, vs="b"), change),
                       "knn": over_teachers(per_teacher("knn", tag, first, b_tag=tag, vs="b"), change),
                       "nmi": over_teachers(_nmi_diffs(folder, teachers, tag, "b"), change)}
        attentive = per_teacher("attentive", tag, first, b_tag=tag, vs="b")
        if attentive:
            claim3[tag]["attentive"] = over_teachers(attentive, change)
    out["claim 3"] = {"referee": first, "minus_b": claim3, "probe": VERDICT_PROBE,
                      "verdict": change_verdict([v["linprobe"]["across_teachers"] for v in claim3.values()])}
    out["claims"] = {"1 separability": {f"vs {CONTROLS[t]}": claim1[t]["verdict"] for t in CONTROLS},
                     "2 semantics": {f"vs {CONTROLS[t]}": claim2[t]["verdict"] for t in CONTROLS},
                     "3 same-class pairing": out["claim 3"]["verdict"]}
    (folder / "claims.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "claims.md").write_text(to_markdown(out))
    return out


def _row(name: str, v: dict) -> str:
    def one(t: str, p: dict) -> str:
        ci = p.get("ci_within_teacher")
        return f"t{t}: {p['diff']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")

    per = "; ".join(one(t, p) for t, p in v["per_teacher"].items())
    across = v["across_teachers"]
    mean = _ci(across) if across["n"] else "–"
    return f"| {name} | {mean} | {across['n']} | {per or '–'} | {v['verdict']} |"


def to_markdown(out: dict) -> str:
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(to_markdown(main(Path(sys.argv[1]))), end="")
