"""``imae report RUN_DIR ...``: one self-contained HTML page comparing runs, and a Markdown table.

Per run (one column each, side by side): its configuration (``config.yaml``), loss curves (epoch records
of ``log.jsonl``), the tables of every evaluation result under ``<run>/eval/`` (the JSON files the
evaluation commands write) and every PNG under ``<run>/eval/`` (figures), embedded as base64.
``report.md`` holds one summary row per run, ready to paste into a README.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from imae.errors import ConfigError
from imae.eval.results import make_output_dir, read_results

HEADLINE_ALPHA = 0.3


# ----------------------------------------------------------------------------------------------
# reading a run


def epoch_records(run: Path) -> list[dict[str, Any]]:
    """The ``kind: epoch`` records of a run's log.jsonl (fine-tune runs log ``epoch`` records too), one per
    epoch in epoch order: an epoch redone after a resume counts once, with its last record."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "epoch":
            by_epoch[rec.get("epoch")] = rec  # a later record of the same epoch replaces the earlier
    return sorted(by_epoch.values(), key=lambda r: r.get("epoch") if isinstance(r.get("epoch"), int) else -1)


def _alpha(values: dict[str, Any], alpha: float = HEADLINE_ALPHA) -> Any:
    """The entry for ``alpha`` of a dict keyed by alpha strings (else the middle one)."""
    if not values:
        return None
    key = f"{alpha:g}"
    if key in values:
        return values[key]
    keys = sorted(values, key=float)
    return values[keys[len(keys) // 2]]


def summary(run: Path) -> dict[str, Any]:
    """One run's headline numbers (None where an evaluation has not been run)."""
    res = read_results(run / "eval") if (run / "eval").is_dir() else {}
    epochs = epoch_records(run)
    row: dict[str, Any] = {"run": run.name, "kind": None, "epochs": len(epochs) or None,
                           "final_loss": epochs[-1].get("loss") if epochs else None}
    any_result = next(iter(res.values()), None)
    if any_result:
        row["kind"] = any_result["checkpoint"]["kind"]
    sep = res.get("separability", {}).get("results", {})
    enc = sep.get("regression", {}).get("encoder", {})
    for target in ("sub_features", "dom_features", "sub_pixels"):
        entry = _alpha(enc.get(target, {}))
        row[f"r2_{target}"] = entry["r2"] if entry else None
    cls = _alpha(sep.get("classification", {}))
    row["sub_class_acc"] = cls["sub_acc"] if cls else None
    lin = res.get("linprobe", {}).get("results") or res.get("semantics", {}).get("results", {}).get("linprobe")
    row["linprobe"] = lin.get("top1") if lin else None
    knn = res.get("knn", {}).get("results") or res.get("semantics", {}).get("results", {}).get("knn")
    row["knn"] = knn.get("top1") if knn else None
    row["nmi"] = res.get("semantics", {}).get("results", {}).get("nmi")
    ft = res.get("finetune", {}).get("results", {})
    row["finetune"] = ft.get("top1", ft.get("final_top1"))  # the last epoch's (older files: final_top1)
    return row


COLUMNS = [("run", "run"), ("kind", "kind"), ("epochs", "epochs"), ("final_loss", "final loss"),
           ("r2_sub_features", "R² sub feat. α=0.3"), ("r2_dom_features", "R² dom feat. α=0.3"),
           ("r2_sub_pixels", "R² sub pix. α=0.3"), ("sub_class_acc", "sub class acc. α=0.3"),
           ("linprobe", "linear probe"), ("knn", "kNN"), ("nmi", "NMI"), ("finetune", "fine-tune")]


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A Markdown table of summary rows (only the columns some row has a value for)."""
    cols = [(k, t) for k, t in columns if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# HTML pieces


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def loss_curve_png(records: list[dict[str, Any]]) -> bytes | None:
    """PNG bytes of every loss term against the epoch (None without records)."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"epoch", "time", "lr", "images_per_s", "time_s", "skipped_files"}
    keys = sorted({k for r in records for k, v in r.items()
                   if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)})
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    for k in keys:
        pts = [(r["epoch"] + 1, r[k]) for r in records if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def separability_tables(results: dict[str, Any], title: str = "separability") -> str:
    alphas = [f"{a:g}" for a in results.get("alphas", [])]
    parts = [f"<h4>{html.escape(title)}</h4><p>pairs {html.escape(json.dumps(results.get('pairs', {})))}; "
             f"reference {html.escape(str(results.get('reference', {}).get('label')))}</p>"]
    for predictor, targets in results.get("regression", {}).items():
        rows = [[t] + [targets[t].get(a, {}).get("r2") for a in alphas] for t in targets]
        parts.append(f"<p>ridge R² (test pairs), predictor <b>{html.escape(predictor)}</b></p>")
        parts.append(_table(["target"] + [f"α={a}" for a in alphas], rows))
        same = [[t] + [f"{fmt(targets[t].get(a, {}).get('r2_same'))} / {fmt(targets[t].get(a, {}).get('r2_diff'))}"
                       for a in alphas] for t in targets if predictor == "encoder"]
        if same:
            parts.append("<p>same-class / different-class pairs</p>")
            parts.append(_table(["target"] + [f"α={a}" for a in alphas], same))
    cls = results.get("classification")
    if cls:
        rows = [[who] + [cls.get(a, {}).get(f"{who}_acc") for a in alphas] for who in ("sub", "dom")]
        parts.append(f"<p>linear classification of the source classes (chance "
                     f"{fmt(results.get('classification_chance'))})</p>")
        parts.append(_table(["class of"] + [f"α={a}" for a in alphas], rows))
    return "".join(parts)


def result_section(command: str, record: dict[str, Any]) -> str:
    r = record["results"]
    if command == "separability":
        return separability_tables(r)
    if command == "semantics":
        rows = [["linear probe top-1", r["linprobe"].get("top1")], ["kNN top-1", r["knn"].get("top1")],
                ["k-means NMI", r.get("nmi")]]
        return ("<h4>semantics</h4>" + _table(["metric", "value"], rows)
                + separability_tables(r.get("separability", {}), "separability, same- vs different-class pairs"))
    flat = [[k, v] for k, v in r.items() if isinstance(v, (int, float, str)) or v is None]
    return f"<h4>{html.escape(command)}</h4>" + _table(["", ""], flat)


def run_column(run: Path) -> str:
    parts = [f"<h2>{html.escape(run.name)}</h2><p class=path>{html.escape(str(run))}</p>"]
    cfg = run / "config.yaml"
    if cfg.is_file():
        parts.append(f"<details><summary>configuration</summary><pre>{html.escape(cfg.read_text())}</pre></details>")
    png = loss_curve_png(epoch_records(run))
    if png is not None:
        parts.append("<h3>loss</h3><img alt=loss src=\"data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}\">")
    eval_dir = run / "eval"
    res = read_results(eval_dir) if eval_dir.is_dir() else {}
    if res:
        parts.append("<h3>evaluation</h3>")
        for command in ("separability", "semantics", "linprobe", "knn", "finetune"):
            if command in res:
                parts.append(result_section(command, res[command]))
    figures = sorted(eval_dir.rglob("*.png")) if eval_dir.is_dir() else []
    if figures:
        parts.append("<h3>figures</h3>" + "".join(f"<p>{html.escape(f.name)}</p>{_png(f)}" for f in figures))
    return "".join(parts)


STYLE = """body{font-family:sans-serif;font-size:13px;margin:16px}
.runs{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(420px,1fr);gap:16px;overflow-x:auto}
.run{border:1px solid #ccc;padding:8px;min-width:0}img{max-width:100%}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
pre{font-size:11px;max-height:300px;overflow:auto;background:#f6f6f6}.path{color:#777;font-size:11px}"""


def write_report(runs: list[Path], out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md``; default folder: ``<run>/eval`` for one run, else
    ``report/`` in the runs' common parent folder."""
    for r in runs:
        if not Path(r).is_dir():
            raise ConfigError(f"run directory {r} does not exist")
    runs = [Path(r) for r in runs]
    if out_dir is None:
        out_dir = runs[0] / "eval" if len(runs) == 1 else \
            Path(os.path.commonpath([str(r.resolve()) for r in runs])) / "report"
    out_dir = make_output_dir(out_dir)
    rows = [summary(r) for r in runs]
    table = markdown_table(rows)
    summary_html = _table([t for _, t in COLUMNS], [[row.get(k) for k, _ in COLUMNS] for row in rows])
    columns = "".join(f"<div class=run>{run_column(r)}</div>" for r in runs)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>imae report</title><style>{STYLE}</style>"
            f"</head><body><h1>imae report</h1>{summary_html}<div class=runs>{columns}</div></body></html>")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(page)
    md_path.write_text(table)
    return {"html": html_path, "md": md_path}
