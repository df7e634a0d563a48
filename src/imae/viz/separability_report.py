"""The separability part of ``imae report``: headline numbers, tables, the two headline figures, the check
that every compared row was scored against one reference on the same pairs, and seed groups.

Headline: token R^2 of the subordinate in the distillation space at the training mask ratio and alpha 0.3,
with its 95% pair-bootstrap interval. A *group* is a set of runs whose configurations differ only in the
seed (and output folder); it is shown as the mean and the spread (sample standard deviation) over its
seeds, beside the mean of its runs' pair-level intervals.
"""

from __future__ import annotations

import html
import io
import statistics
from typing import Any

HEADLINE_ALPHA = "0.3"
BASELINE_STYLE = {"superposition": ("black", ":"), "pixels": ("tab:gray", "--"), "random_init": ("tab:brown", "--"),
                  "reference_on_mixture": ("tab:olive", "-."), "partner_only": ("tab:pink", ":")}


def _space(block: dict[str, Any]) -> str:
    return "distill" if "distill" in block.get("encoder", {}) else "encoder"


def headline_block(results: dict[str, Any]) -> dict[str, Any] | None:
    """The token block at the headline (training) mask ratio, or None for an old (pooled-only) result."""
    if results.get("scheme") != "tokens":
        return None
    return results["tokens"][results["ratios"][0]]


def _at(values: dict[str, Any], ak: str = HEADLINE_ALPHA) -> Any:
    if not values:
        return None
    return values.get(ak, values[sorted(values, key=float)[len(values) // 2]])


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one separability result (keys prefixed ``sep_``; None where absent)."""
    block = headline_block(results)
    if block is None:
        return {}
    space = _space(block)
    sub, total = _at(block["encoder"][space]["sub"]), _at(block["encoder"][space]["sum"])
    row: dict[str, Any] = {"sep_r2_sub": sub["r2"], "sep_r2_sub_ci": sub["ci"], "sep_r2_sum": total["r2"],
                           "sep_reference": results["reference"].get("sha256"),
                           "sep_reference_label": results["reference"].get("label"),
                           "sep_pairs": (results["pairs"].get("same_class_p"), results["pairs"].get("test"),
                                         results.get("mask_ratio"))}
    branch = block.get("branches", {}).get("sub")
    row["sep_branch_r2_sub"] = _at(branch)["r2"] if branch else None
    for name in ("pixels", "random_init"):
        b = block["baselines"].get(name)
        row[f"sep_{name}"] = _at(b[space]["sub"])["r2"] if b else None
    cls = results.get("classification", {}).get("encoder")
    row["sep_sub_class_acc"] = _at(cls)["sub"]["acc"] if cls else None
    return row


def flags(rows: list[dict[str, Any]]) -> list[str]:
    """One warning line per row scored against another reference, or on other pairs, than the first row."""
    scored = [r for r in rows if r.get("sep_reference")]
    if len(scored) < 2:
        return []
    first, out = scored[0], []
    for r in scored[1:]:
        if r["sep_reference"] != first["sep_reference"]:
            out.append(f"{r['run']}: separability scored against reference {r['sep_reference_label']} "
                       f"({r['sep_reference'][:12]}), not {first['sep_reference_label']} "
                       f"({first['sep_reference'][:12]}) like {first['run']}: its R² is not comparable")
        elif r["sep_pairs"] != first["sep_pairs"]:
            out.append(f"{r['run']}: separability pairs (same-class p, test pairs, mask ratio) {r['sep_pairs']} differ "
                       f"from {first['run']}'s {first['sep_pairs']}")
    return out


def groups(configs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Runs (by name) whose configurations differ only in ``seed`` and ``output_dir``, in first-seen order."""
    out: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        key = repr(sorted((k, repr(v)) for k, v in cfg.items() if k not in ("seed", "output_dir")))
        out.setdefault(key, []).append(name)
    return list(out.values())


def group_row(name: str, members: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean over the members of each numeric key, with ``<key>_sd`` the spread across them."""
    row: dict[str, Any] = {"run": f"{name} (mean of {len(members)} seeds)", "kind": members[0].get("kind")}
    for k in keys:
        vals = [m[k] for m in members if isinstance(m.get(k), (int, float))]
        if len(vals) == len(members) and vals:
            row[k] = statistics.fmean(vals)
            row[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    cis = [m["sep_r2_sub_ci"] for m in members if m.get("sep_r2_sub_ci") and None not in m["sep_r2_sub_ci"]]
    if cis:
        row["sep_r2_sub_halfwidth"] = statistics.fmean((hi - lo) / 2 for lo, hi in cis)
    return row


def _plot(ax, xs, ys, lo, hi, label, **style) -> None:
    ax.plot(xs, ys, marker="o", label=label, **style)
    if lo and all(v is not None for v in lo + hi):
        ax.fill_between(xs, lo, hi, alpha=0.2, color=ax.lines[-1].get_color())


def headline_figure(named: list[tuple[str, dict[str, Any]]]) -> bytes | None:
    """PNG: token R^2(sub) against alpha (left) and sub-class accuracy against alpha (right), one line per
    run with its 95% band, the baselines of the first run as grey lines."""
    named = [(n, r) for n, r in named if headline_block(r) is not None]
    if not named:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r2, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for name, res in named:
        block = headline_block(res)
        space, keys = _space(block), [f"{a:g}" for a in res["alphas"]]
        xs = [float(k) for k in keys]
        entries = [block["encoder"][space]["sub"][k] for k in keys]
        _plot(ax_r2, xs, [e["r2"] for e in entries], [e["ci"][0] for e in entries], [e["ci"][1] for e in entries],
              name)
        cls = res.get("classification", {}).get("encoder")
        if cls:
            ce = [cls[k]["sub"] for k in keys]
            _plot(ax_acc, xs, [e["acc"] for e in ce], [e["ci"][0] for e in ce], [e["ci"][1] for e in ce], name)
    res = named[0][1]
    block, keys = headline_block(res), [f"{a:g}" for a in res["alphas"]]
    space, xs = _space(block), [float(k) for k in keys]
    color, ls = BASELINE_STYLE["superposition"]
    ax_r2.plot(xs, [res["superposition"][k]["sub"] for k in keys], color=color, linestyle=ls, label="superposition")
    for name, b in block["baselines"].items():
        color, ls = BASELINE_STYLE[name]
        values = b[space]["sub"]
        ys = [values[k]["r2"] for k in keys] if keys[0] in values else [values["r2"]] * len(keys)
        ax_r2.plot(xs, ys, color=color, linestyle=ls, linewidth=1, label=name.replace("_", " "))
    cls = res.get("classification")
    if cls:
        pix = cls["baselines"].get("pixels", {})
        if pix:
            ax_acc.plot(xs, [pix[k]["sub"]["acc"] for k in keys], color="tab:gray", linestyle="--", linewidth=1,
                        label="pixels")
        partner = cls["baselines"].get("partner_only")
        if partner:
            ax_acc.axhline(partner["sub"]["acc"], color="tab:pink", linestyle=":", linewidth=1, label="partner only")
        ax_acc.axhline(cls["chance"]["sub"], color="black", linestyle=":", linewidth=1, label="majority class")
    ratio = res["ratios"][0]
    ax_r2.set(xlabel="α (weight of the subordinate)", ylabel="token R² of the subordinate",
              title=f"separability (mask ratio {ratio}, {space} space)")
    ax_acc.set(xlabel="α (weight of the subordinate)", ylabel="accuracy of the subordinate's class",
               title="separability by classification")
    for ax in (ax_r2, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _ci(entry: dict[str, Any] | None, key: str) -> str:
    if not entry:
        return "–"
    lo, hi = entry.get("ci") or (None, None)
    return f"{entry[key]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def tables_html(results: dict[str, Any], title: str = "separability") -> str:
    """Per mask ratio: R^2 per alpha of every predictor and baseline (subordinate, dominant, sum), the
    same-/different-class split of the encoder's R^2(sub), and the classification accuracies."""
    if results.get("scheme") != "tokens":
        return f"<h4>{html.escape(title)}</h4><p>a result of an older version (pooled scheme); rerun it</p>"
    keys = [f"{a:g}" for a in results["alphas"]]
    pairs, ref = results["pairs"], results["reference"]
    head = ["predictor (source)", *[f"α={k}" for k in keys]]
    p = html.escape(str(pairs["same_class_p"]))
    parts = [f"<h4>{html.escape(title)}</h4><p>{pairs['test']} test pairs ({pairs['test_same']} same-class, "
             f"{pairs['test_diff']} different-class; partners same-class with p={p}"
             f"), reference <b>{html.escape(str(ref['label']))}</b> (sha256 {html.escape(str(ref['sha256'])[:12])}); "
             f"every value with its 95% pair-bootstrap interval</p>"]
    for rk in results["ratios"]:
        block = results["tokens"][rk]
        space = _space(block)
        rows = [["superposition (sub)", *[_f(results["superposition"][k]["sub"]) for k in keys]]]
        for who in ("sub", "dom", "sum"):
            rows.append([f"encoder ({who})", *[_ci(block["encoder"][space][who].get(k), "r2") for k in keys]])
        for who, values in block.get("branches", {}).items():
            rows.append([f"own branch map, no refit ({who})", *[_ci(values.get(k), "r2") for k in keys]])
        for name, b in block["baselines"].items():
            values = b[space]["sub"]
            rows.append([f"{name.replace('_', ' ')} (sub)",
                         *([_ci(values.get(k), "r2") for k in keys] if keys[0] in values else
                           [_ci(values, "r2")] * len(keys))])
        for tag in ("same", "diff"):
            rows.append([f"encoder (sub), {'same' if tag == 'same' else 'different'}-class pairs",
                         *[_ci(block["encoder"][space]["sub"][k].get(tag), "r2") for k in keys]])
        label = "training mask ratio" if rk == results["ratios"][0] else "unmasked"
        parts.append(f"<p>token R², {space} space, mask ratio {rk} ({label})</p>" + _rows_html(head, rows))
    cls = results.get("classification")
    if cls:
        rows = [[f"encoder ({who})", *[_ci(cls["encoder"][k][who], "acc") for k in keys]] for who in ("sub", "dom")]
        if cls["baselines"].get("pixels"):
            rows.append(["pixels (sub)", *[_ci(cls["baselines"]["pixels"][k]["sub"], "acc") for k in keys]])
        if cls["baselines"].get("partner_only"):
            rows.append(["partner only (sub)", *[_ci(cls["baselines"]["partner_only"]["sub"], "acc")] * len(keys)])
        rows.append(["majority class (sub)", *[_f(cls["chance"]["sub"])] * len(keys)])
        parts.append(f"<p>class of each source from the pooled ({html.escape(cls['pool'])}) mixture latent, mask "
                     f"ratio {cls['ratio']}</p>" + _rows_html(head, rows))
    return "".join(parts)


def _rows_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def compare_html(results: dict[str, Any]) -> str:
    """An ``imae compare`` result as a table: metric, alpha, A, B, B - A with its 95% interval."""
    a, b = results["a"]["label"], results["b"]["label"]
    rows = []
    for metric, values in results["metrics"].items():
        if metric == "token_r2_sub_space":
            continue
        for ak, r in ([("", values)] if "diff" in values else values.items()):
            lo, hi = r["ci"]
            rows.append([metric.replace("_", " "), ak, _f(r["a"]), _f(r["b"]), f"{r['diff']:+.3f}",
                         f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "–"])
    ref = results["reference"]
    return (f"<h3>{html.escape(b)} minus {html.escape(a)}</h3><p>identical pairs ({results['pairs']['test']} test "
            f"pairs) and masks (ratio {results['mask_ratio']:g}), reference {html.escape(str(ref['label']))} "
            f"(sha256 {html.escape(str(ref['sha256'])[:12])}); paired-bootstrap 95% intervals</p>"
            + _rows_html(["metric", "α", a, b, "B − A", "95% CI"], rows))
