"""The separability part of ``imae report``: headline numbers, tables, the headline figure, the checks that every
compared row was scored against one reference on the same pairs (and what that reference is to each model), and
seed groups.

Every number is read through :class:`imae.eval.separability_result.SeparabilityResult` (either scheme version;
results written before the un-mixing gain are read as ``legacy`` and flagged). Headline: the **un-mixing gain**
of the subordinate, R^2(target | mixture) - R^2(target | partner alone), at the result's headline alpha, mask
ratio and space, with its 95% pair-bootstrap interval, beside the two R^2 it is the difference of and the gains
of the trivial predictors (pixels, an untrained encoder). A reference that is not a referee (the model itself,
its teacher, the checkpoint it started from) is named with its note. A *group* is a set of runs whose
configurations differ only in the seed (and output folder); it is shown as the mean and the spread (sample
standard deviation) over its seeds, beside the mean half-width of its runs' pair-level intervals of the gain.
"""

from __future__ import annotations

import html
import statistics
from typing import Any

from imae.eval.separability_result import PREDICTORS, SOURCES, SeparabilityResult
from imae.viz.output import png_bytes

BASELINE_STYLE = {"superposition": ("black", ":"), "pixels": ("tab:gray", "--"), "random_init": ("tab:brown", "--")}
LEGACY = "separability measured by the old scheme (no un-mixing gain interval); rerun imae separability"


def read(results: dict[str, Any] | None) -> SeparabilityResult | None:
    """The typed result of a separability ``results`` (None for none, or for the pooled scheme of old versions)."""
    if not results:
        return None
    try:
        return SeparabilityResult.from_json(results)
    except (ValueError, KeyError, TypeError):
        return None


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one separability result (keys prefixed ``sep_``; {} without a token-level result)."""
    result = read(results)
    if result is None:
        return {}
    h = result.headline()
    lo, hi = h["gain_ci"]
    note, label = result.reference_note, h["reference"]
    return {"sep_alpha": h["alpha"], "sep_gain": h["gain"], "sep_gain_ci": [lo, hi],
            "sep_gain_ci_text": f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else None,
            "sep_r2_mixture": h["r2_mixture"], "sep_r2_partner": h["r2_partner"],
            "sep_pixels_gain": h["pixels_gain"], "sep_random_init_gain": h["random_init_gain"],
            "sep_branch_r2_sub": h["branch_r2"], "sep_sub_class_acc": h["sub_class_acc_diff"],
            "sep_reference": result.reference.get("sha256"), "sep_reference_label": label,
            "sep_reference_note": note, "sep_reference_text": f"{label} ({note})" if note else label,
            "sep_legacy": result.legacy,
            "sep_pairs": (result.pairs.get("same_class_p"), result.pairs.get("test"), h["ratio"]),
            "sep_head": (h["alpha"], h["space"], h["source"])}


def flags(rows: list[dict[str, Any]], referee: dict[str, str] | None = None) -> list[str]:
    """One warning line per row scored against another reference (than ``referee`` {"sha256", "label", "path"}
    when given, else than the first row), on other pairs or at another headline than the first row; per row
    whose reference is not a referee (its note: "scored against its own teacher"); and per row measured by the
    old scheme."""
    scored = [r for r in rows if "sep_pairs" in r]  # runs with a separability result (no group rows)
    out: list[str] = []
    first = scored[0] if scored else None
    for r in scored:
        if referee and r.get("sep_reference") != referee["sha256"]:
            out.append(f"{r['run']}: separability scored against {r['sep_reference_label']}, not the referee "
                       f"{referee['label']}; rescore it with imae separability <run> --reference {referee['path']}")
        elif not referee and r is not first and r.get("sep_reference") != first.get("sep_reference"):
            out.append(f"{r['run']}: separability scored against reference {r['sep_reference_label']} "
                       f"({str(r['sep_reference'])[:12]}), not {first['sep_reference_label']} "
                       f"({str(first['sep_reference'])[:12]}) like {first['run']}: its gain is not comparable")
        elif r is not first and r["sep_pairs"] != first["sep_pairs"]:
            out.append(f"{r['run']}: separability pairs (same-class p, test pairs, mask ratio) {r['sep_pairs']} differ "
                       f"from {first['run']}'s {first['sep_pairs']}")
        elif r is not first and r["sep_head"] != first["sep_head"]:
            out.append(f"{r['run']}: separability headline (α, space, source) {r['sep_head']} differs from "
                       f"{first['run']}'s {first['sep_head']}")
        if r.get("sep_reference_note"):
            out.append(f"{r['run']}: {r['sep_reference_note']} (reference {r['sep_reference_label']}, not a referee)")
        if r.get("sep_legacy"):
            out.append(f"{r['run']}: {LEGACY}")
    return out


def groups(configs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Runs (by name) whose configurations differ only in ``seed`` and ``output_dir``, in first-seen order."""
    out: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        key = repr(sorted((k, repr(v)) for k, v in cfg.items() if k not in ("seed", "output_dir")))
        out.setdefault(key, []).append(name)
    return list(out.values())


def group_row(name: str, members: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean over the members of each numeric key, with ``<key>_sd`` the spread across them, and
    ``sep_gain_halfwidth`` the mean half-width of the members' intervals of the gain."""
    row: dict[str, Any] = {"run": f"{name} (mean of {len(members)} seeds)", "kind": members[0].get("kind")}
    for k in keys:
        vals = [m[k] for m in members if isinstance(m.get(k), (int, float))]
        if len(vals) == len(members) and vals:
            row[k] = statistics.fmean(vals)
            row[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    cis = [m["sep_gain_ci"] for m in members if m.get("sep_gain_ci") and None not in m["sep_gain_ci"]]
    if cis and len(cis) == len(members):
        row["sep_gain_halfwidth"] = statistics.fmean((hi - lo) / 2 for lo, hi in cis)
    return row


def _plot(ax, xs, entries, key, label, **style) -> None:
    """One line of ``entries[i][key]`` against xs with its interval band (where every entry has one)."""
    ax.plot(xs, [e[key] for e in entries], marker="o", label=label, **style)
    cis = [e.get("ci") or (None, None) for e in entries]
    if all(lo is not None and hi is not None for lo, hi in cis):
        ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], alpha=0.2, color=ax.lines[-1].get_color())


def headline_figure(named: list[tuple[str, dict[str, Any]]]) -> bytes | None:
    """PNG: the un-mixing gain of the subordinate against alpha (left; each run with its 95% band, the first
    run's pixels and random-init gains dashed, the superposition line of independent sources dotted) and, where
    scored, the accuracy of the subordinate's class on different-class pairs (right)."""
    typed = [(n, r) for n, r in ((n, read(res)) for n, res in named) if r is not None]
    if not typed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = [(n, r) for n, r in typed
                if all(r.class_accuracy("sub", a) is not None for a in r.alphas)]
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(10 if accuracy else 5.5, 3.8), dpi=110,
                             squeeze=False)
    ax_gain = axes[0][0]
    for name, res in typed:
        entries = [res.gain("sub", a) for a in res.alphas]
        keep = [(float(a), e) for a, e in zip(res.alphas, entries) if e is not None]
        if keep:
            _plot(ax_gain, [x for x, _ in keep], [e for _, e in keep], "gain", name)
    res = typed[0][1]
    xs = [float(a) for a in res.alphas]
    color, ls = BASELINE_STYLE["superposition"]
    ax_gain.plot(xs, [res.superposition("sub", a) for a in res.alphas], color=color, linestyle=ls,
                 label="superposition (independent sources only)")
    for name in ("pixels", "random_init"):
        values = [res.gain("sub", a, predictor=name) for a in res.alphas]
        if all(v is not None for v in values):
            color, ls = BASELINE_STYLE[name]
            ax_gain.plot(xs, [v["gain"] for v in values], color=color, linestyle=ls, linewidth=1,
                         label=f"{name.replace('_', ' ')} gain")
    ax_gain.axhline(0, color="black", linewidth=0.5)
    h = res.head
    ax_gain.set(xlabel="α (weight of the subordinate)", ylabel="gain: R²(mixture) − R²(partner alone)",
                title=f"un-mixing gain of the subordinate (mask ratio {h['ratio']}, {h['space']} space)")
    if accuracy:
        ax_acc = axes[0][1]
        for name, r in accuracy:
            _plot(ax_acc, [float(a) for a in r.alphas], [r.class_accuracy("sub", a) for a in r.alphas], "acc", name)
        res = accuracy[0][1]
        xs = [float(a) for a in res.alphas]
        pix = [res.class_accuracy("sub", a, predictor="pixels") for a in res.alphas]
        if all(p is not None for p in pix):
            ax_acc.plot(xs, [p["acc"] for p in pix], color="tab:gray", linestyle="--", linewidth=1, label="pixels")
        partner = res.class_accuracy("sub", predictor="partner_only")
        if partner is not None:
            ax_acc.axhline(partner["acc"], color="tab:pink", linestyle=":", linewidth=1, label="partner only")
        chance = ((res.data.get("classification") or {}).get("chance_diff") or {}).get("sub")
        if chance is not None:
            ax_acc.axhline(chance, color="black", linestyle=":", linewidth=1, label="majority class")
        ax_acc.set(xlabel="α (weight of the subordinate)", ylabel="accuracy of the subordinate's class",
                   title="subordinate's class, different-class pairs")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, close=True)


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _ci(entry: dict[str, Any] | None, key: str, sign: str = "") -> str:
    if not entry or entry.get(key) is None:
        return "–"
    lo, hi = entry.get("ci") or (None, None)
    return format(entry[key], f"{sign}.3f") + (f" [{lo:{sign}.3f}, {hi:{sign}.3f}]" if lo is not None else "")


def tables_html(results: dict[str, Any], title: str = "separability") -> str:
    """Per mask ratio, in the headline space: per alpha, the un-mixing gain of each source with the R^2 from the
    mixture and from the partner alone it is the difference of, the baselines' gains and R^2, the i-MAE's own
    branch maps, and the gain on same- and different-class pairs; then the classification accuracies."""
    result = read(results)
    if result is None:
        return f"<h4>{html.escape(title)}</h4><p>a result of an older version (pooled scheme); rerun it</p>"
    keys, pairs, ref, h = result.alphas, result.pairs, result.reference, result.head
    head = ["predictor (source): score", *[f"α={k}" for k in keys]]
    note = result.reference_note
    p = html.escape(str(pairs.get("same_class_p")))
    parts = [f"<h4>{html.escape(title)}</h4>"]
    if result.legacy:
        parts.append(f"<p class=warn>⚠ {html.escape(LEGACY)}</p>")
    parts.append(f"<p>{pairs.get('test')} test pairs ({pairs.get('test_same')} same-class, {pairs.get('test_diff')} "
                 f"different-class; partners same-class with p={p}), reference <b>{html.escape(str(ref.get('label')))}"
                 f"</b> (sha256 {html.escape(str(ref.get('sha256'))[:12])}"
                 + (f"; <b>{html.escape(note)}</b>" if note else "; a referee") + "). Gain = R² of the source's "
                 "reference tokens from the mixture minus R² from the partner image alone; every value with its "
                 "95% pair-bootstrap interval (none for results of the old scheme).</p>")
    for rk in result.ratios:
        rows = [["superposition (sub, independent sources only)", *[_f(result.superposition("sub", k)) for k in keys]]]
        for name in PREDICTORS:
            for who in (SOURCES if name == "encoder" else ("sub",)):
                label = f"{name.replace('_', ' ')} ({who})"
                kw = dict(predictor=name, ratio=rk)
                gains = [result.gain(who, k, **kw) for k in keys]
                mixture = [result.r2(who, k, **kw) for k in keys]
                partner = result.partner(who, **kw)
                rows.append([f"{label}: un-mixing gain", *[_ci(g, "gain", "+") for g in gains]])
                rows.append([f"{label}: R² from the mixture", *[_ci(m, "r2") for m in mixture]])
                rows.append([f"{label}: R² from the partner alone", *[_ci(partner, "r2")] * len(keys)])
        for who in SOURCES:
            branch = [result.branch(who, k, ratio=rk) for k in keys]
            if any(branch):
                rows.append([f"own branch map, no refit ({who})", *[_ci(b, "r2") for b in branch]])
        for tag, words in (("same", "same-class pairs"), ("diff", "different-class pairs")):
            gains = [(result.gain("sub", k, ratio=rk) or {}).get(tag) for k in keys]
            if any(gains):
                rows.append([f"encoder (sub): un-mixing gain, {words}", *[_ci(g, "gain", "+") for g in gains]])
        label = "training mask ratio" if rk == result.ratios[0] else "unmasked"
        parts.append(f"<p>token R², {html.escape(h['space'])} space, mask ratio {rk} ({label})</p>"
                     + _rows_html(head, rows))
    cls = result.data.get("classification")
    if cls:
        rows = []
        for who in SOURCES:
            rows.append([f"encoder ({who}), all pairs", *[_ci(result.class_accuracy(who, k, subset=None), "acc")
                                                         for k in keys]])
        rows.append(["encoder (sub), different-class pairs", *[_ci(result.class_accuracy("sub", k), "acc")
                                                               for k in keys]])
        pix = [result.class_accuracy("sub", k, predictor="pixels") for k in keys]
        if any(pix):
            rows.append(["pixels (sub), different-class pairs", *[_ci(v, "acc") for v in pix]])
        partner = result.class_accuracy("sub", predictor="partner_only")
        if partner:
            rows.append(["partner only (sub), different-class pairs", *[_ci(partner, "acc")] * len(keys)])
        chance = (cls.get("chance_diff") or {}).get("sub")
        if chance is not None:
            rows.append(["majority class (sub), different-class pairs", *[_f(chance)] * len(keys)])
        parts.append(f"<p>class of each source from the pooled ({html.escape(str(cls.get('pool')))}) mixture latent, "
                     f"mask ratio {cls.get('ratio')}; the subordinate's class means something only on "
                     f"different-class pairs</p>" + _rows_html(head, rows))
    return "".join(parts)


def _rows_html(header: list[str], rows: list[list[str]]) -> str:
    rows = [r for r in rows if any(c != "–" for c in r[1:])]  # a score this result does not hold: no row
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _diff_cells(r: dict[str, Any]) -> list[str]:
    """A, B, B - A and its interval of one ``imae compare`` difference."""
    lo, hi = r.get("ci") or (None, None)
    return [_f(r.get("a")), _f(r.get("b")), f"{r['diff']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "–"]


def _reference_line(results: dict[str, Any]) -> str:
    ref = results.get("reference") or {}
    if "a" in ref and "b" in ref:
        from imae.eval.compare import reference_line

        return reference_line(results)
    return f"reference: {ref.get('label')} (sha256 {str(ref.get('sha256'))[:12]})"  # written before the roles


def compare_html(results: dict[str, Any]) -> str:
    """An ``imae compare`` result: metric, alpha (the probe: its one l2), A, B, B - A with its 95% interval; the
    probe's top-1 at every l2 of the grid as its own table; the reference both were scored against and what it
    is to each."""
    a, b = results["a"]["label"], results["b"]["label"]
    metrics = results["metrics"]
    rows = []
    for metric, values in metrics.items():
        if metric in ("where", "linprobe_curve") or not isinstance(values, dict):
            continue
        if "diff" in values:
            key = f"l2 {values['l2']:g}" if values.get("l2") is not None else ""
            rows.append([metric.replace("_", " "), key, *_diff_cells(values)])
        else:
            rows += [[metric.replace("_", " "), ak, *_diff_cells(r)] for ak, r in values.items()]
    where = metrics.get("where") or {}
    at = (f"; gains and R² in the {where['space']} space at mask ratio {where['ratio']}, headline α="
          f"{where['headline_alpha']}" if where else "")
    acc = (f"; sub class acc on {where['sub_class_acc_pairs']} different-class pairs"
           if where.get("sub_class_acc_pairs") is not None else "")
    out = (f"<h3>{html.escape(b)} minus {html.escape(a)}</h3><p>identical pairs ({results['pairs']['test']} test "
           f"pairs) and masks (ratio {results['mask_ratio']:g}){html.escape(at + acc)}; paired-bootstrap 95% "
           f"intervals. {html.escape(_reference_line(results))}</p>"
           + _rows_html(["metric", "α / l2", a, b, "B − A", "95% CI"], rows))
    curve = metrics.get("linprobe_curve")
    if curve:
        probe = metrics.get("linprobe") or {}
        rule = f" (the comparison's l2 {probe['l2']:g}: {probe.get('l2_rule')})" if probe.get("l2") is not None else ""
        out += (f"<p>linear probe top-1 at every l2 of the grid{html.escape(rule)}</p>"
                + _rows_html(["l2", a, b, "B − A", "95% CI"], [[k, *_diff_cells(r)] for k, r in curve.items()]))
    return out
