"""``imae report RUN_DIR ...``: one self-contained HTML page comparing runs, and a Markdown table.

The page, top to bottom: a summary table (one row per run, with its data set); the figures that compare
runs (the ablation grid, the weight histograms); then one card per run: what it is (kind, data set,
epochs), its training charts (loss terms on one axis; lr, alpha, same-class rate and data wait in small
charts), the tables of its evaluation results (the JSON files under ``<run>/eval/``), its own figures
with captions (from ``figures.json``, written by ``imae figures``) and its configuration. Every image is
embedded as base64. ``report.md`` holds one summary row per run, ready to paste into a README.

Separability is read through :class:`imae.eval.separability_result.SeparabilityResult` (see
:mod:`imae.viz.separability_report`): the un-mixing gain of the subordinate at the headline alpha with its
interval, the R^2 from the mixture and from the partner alone, the pixels and random-init gains, and the
reference with its note when it is not a referee; every such note, and every result of the old scheme, is
flagged above the table. Linear probes that chose different penalties are not compared at their own choices:
every run's top-1 is shown at one shared l2 (the first run's, read from each run's ``l2_curve``) and a line
says so; a probe without a curve value there is flagged as not comparable.

A RUN_DIR may also be a folder of runs (each subfolder that is a run is taken). Both files are written
atomically; a full disk leaves the previous ones as they were (one-line error, exit 2).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from imae.console import info
from imae.errors import ConfigError
from imae.eval.results import make_output_dir, read_results
from imae.viz import separability_report as sepr
from imae.viz.charts import training_chart_png
from imae.viz.depth_chart import depth_figure
from imae.viz.output import write_files

# ----------------------------------------------------------------------------------------------
# reading a run


def is_run(folder: Path) -> bool:
    """A run directory: it holds a configuration, a log, or evaluation results."""
    return folder.is_dir() and any((folder / n).exists() for n in ("config.yaml", "log.jsonl", "epochs.jsonl")) \
        or (folder / "eval").is_dir() and bool(read_results(folder / "eval"))


def find_runs(paths: list[Path]) -> list[Path]:
    """The runs named: each path that is a run, else the runs among its subfolders (sorted). ConfigError
    when a path does not exist or no run is found at all."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ConfigError(f"run directory {p} does not exist")
        found = [p] if is_run(p) else [c for c in sorted(p.iterdir()) if c.is_dir() and is_run(c)]
        runs += [r for r in found if r not in runs]
    if not runs:
        raise ConfigError(f"no runs found in {', '.join(map(str, paths))} (a run directory holds config.yaml, "
                          f"log.jsonl or eval/ results); nothing written")
    return runs


REPORT_OUTPUTS = ("headline.png", "report.png")  # what `imae report` and render_report.py write beside the page


def epoch_records(run: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The ``kind: epoch`` records of a run's log.jsonl (or of the ``epochs.jsonl`` a study folder keeps;
    fine-tune runs log ``epoch`` records too), one per epoch in epoch order: an epoch redone after a
    resume counts once, with its last record. ``epoch`` is 1-based. Lines that are not JSON records (a
    damaged or binary file) are skipped; ``warn``: say so in one line."""
    log = run / "log.jsonl" if (run / "log.jsonl").is_file() else run / "epochs.jsonl"
    if not log.is_file():
        return []
    try:
        data = log.read_bytes()
    except OSError as e:
        info(f"warning: cannot read {log} ({e.strerror}); {run.name} is reported without its training records", warn)
        return []
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text or "\0" in text:
        info(f"warning: {log} is not all text (damaged?); the records that cannot be read are left out of the "
             f"report", warn)
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    by_epoch: dict[Any, dict[str, Any]] = {}
    for rec in records:
        if rec.get("kind") == "epoch":
            by_epoch[rec.get("epoch")] = rec  # a later record of the same epoch replaces the earlier
    return sorted(by_epoch.values(), key=lambda r: r.get("epoch") if isinstance(r.get("epoch"), int) else -1)


def _config(run: Path) -> dict[str, Any]:
    """The run's config.yaml ({} when it is missing, not text, not YAML or too large: the report goes on)."""
    from imae.config.tree import load_yaml
    from imae.errors import ConfigError

    try:
        data = load_yaml((run / "config.yaml").read_text(), f"{run / 'config.yaml'}")
    except (OSError, UnicodeDecodeError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_of(run: Path, results: dict[str, Any] | None = None) -> str | None:
    """The data set a run was evaluated on (its result files), else trained on (config.yaml)."""
    for rec in (results or {}).values():
        name = (rec.get("data") or {}).get("dataset")
        if name:
            return str(name)
    cfg = _config(run)
    name = (cfg.get("data") or {}).get("dataset") if isinstance(cfg.get("data"), dict) else None
    return str(name) if name else None


def run_results(run: Path, warn: bool = False) -> dict[str, dict[str, Any]]:
    """The evaluation results of a run by command (``read_results`` of its eval/), without the files that lack
    what every result records (``checkpoint``, ``results``); ``warn``: name each such file in one line."""
    res = read_results(run / "eval") if (run / "eval").is_dir() else {}
    for command, rec in list(res.items()):
        missing = [k for k in ("checkpoint", "results") if not isinstance(rec.get(k), dict)]
        if missing:
            info(f"warning: {rec.path} is not a complete {command} result (no {', '.join(missing)}); it is "
                 f"left out of the report: run `imae {command}` again to replace it", warn)
            del res[command]
    return res


def summary(run: Path) -> dict[str, Any]:
    """One run's headline numbers (None where an evaluation has not been run)."""
    res = run_results(run, warn=True)
    epochs = epoch_records(run, warn=True)
    row: dict[str, Any] = {"run": run.name, "kind": None, "dataset": dataset_of(run, res),
                           "epochs": len(epochs) or None, "final_loss": epochs[-1].get("loss") if epochs else None}
    any_result = next(iter(res.values()), None)
    if any_result:
        row["kind"] = any_result["checkpoint"].get("kind")
    elif _config(run).get("method") in ("mae", "imae"):
        row["kind"] = _config(run)["method"]
    row.update(sepr.summary(res.get("separability", {}).get("results", {})))
    lin = res.get("linprobe", {}).get("results") or res.get("semantics", {}).get("results", {}).get("linprobe")
    row["linprobe"] = lin.get("top1") if lin else None
    if lin:  # the probe's penalty, the rule that chose it and its top-1 at every l2 of the grid (cached mode)
        row.update(linprobe_l2=lin.get("l2"), linprobe_l2_text=_l2(lin.get("l2")), linprobe_rule=lin.get("l2_rule"),
                   linprobe_curve=lin.get("l2_curve"))
    knn = res.get("knn", {}).get("results") or res.get("semantics", {}).get("results", {}).get("knn")
    row["knn"] = knn.get("top1") if knn else None
    row["nmi"] = res.get("semantics", {}).get("results", {}).get("nmi")
    ft = res.get("finetune", {}).get("results", {})
    row["finetune"] = ft.get("top1", ft.get("final_top1"))  # the last epoch's (older files: final_top1)
    return row


def _l2(v: Any) -> str | None:
    return None if v is None else f"{v:g}"


COLUMNS = [("run", "run"), ("kind", "kind"), ("dataset", "data set"), ("epochs", "epochs"),
           ("final_loss", "final loss"), ("sep_alpha", "headline α"),
           ("sep_gain", "un-mixing gain (sub)"), ("sep_gain_ci_text", "95% CI"), ("sep_gain_sd", "sd over seeds"),
           ("sep_gain_halfwidth", "mean CI half-width"),
           ("sep_r2_mixture", "R²(sub) from mixture"), ("sep_r2_partner", "R²(sub) from partner alone"),
           ("sep_pixels_gain", "pixels gain"), ("sep_random_init_gain", "random-init gain"),
           ("sep_branch_r2_sub", "own branch R²(sub)"), ("sep_sub_class_acc", "sub class acc. (diff.-class pairs)"),
           ("sep_reference_text", "reference"),
           ("linprobe", "linear probe"), ("linprobe_l2_text", "probe l2"), ("knn", "kNN"), ("nmi", "NMI"),
           ("finetune", "fine-tune (last epoch)")]
GROUPED = ["sep_gain", "sep_r2_mixture", "sep_r2_partner", "sep_branch_r2_sub", "sep_sub_class_acc", "linprobe", "knn",
           "nmi", "finetune"]


def _curve_at(curve: dict[str, Any] | None, l2: float | None) -> float | None:
    """The top-1 of an ``l2_curve`` at the grid point equal to ``l2`` (None if it has none)."""
    if not curve or l2 is None:
        return None
    return next((t for g, t in zip(curve.get("grid", []), curve.get("top1", []))
                 if math.isclose(g, l2, rel_tol=1e-6)), None)


def shared_probe(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """When the rows' linear probes chose different penalties, every row's top-1 at ONE shared l2, the first
    row's, read from each row's ``l2_curve`` (the grid point equal to it), in place of its own choice (rows are
    changed in place: ``linprobe``, ``linprobe_l2``, ``linprobe_l2_text``). Returns (caption lines, warnings:
    a row without a curve value at the shared l2 keeps its own top-1, flagged as not comparable)."""
    probed = [r for r in rows if r.get("linprobe") is not None]
    if len({_l2(r.get("linprobe_l2")) for r in probed}) < 2:
        return [], []
    first = probed[0]
    l2 = first.get("linprobe_l2")
    own = "; ".join(f"{r['run']}: l2 {_l2(r.get('linprobe_l2')) or 'none'}, top-1 {r['linprobe']:.3f}"
                    for r in probed)
    warnings, read = [], 0
    for r in probed:
        at = _curve_at(r.get("linprobe_curve"), l2)
        if at is not None:
            r.update(linprobe=at, linprobe_l2=l2, linprobe_l2_text=_l2(l2))
            read += 1
        elif _l2(r.get("linprobe_l2")) != _l2(l2):
            warnings.append(f"{r['run']}: its linear probe's penalty (l2 {_l2(r.get('linprobe_l2')) or 'none'}, "
                            f"{r.get('linprobe_rule') or 'rule not recorded'}) differs from {first['run']}'s (l2 "
                            f"{_l2(l2) or 'none'}) and it has no l2_curve value there: its top-1 is not comparable")
    captions = [f"linear probe: the runs' probes chose different l2 penalties ({own}); the table shows every run's "
                f"top-1 at one shared l2, {first['run']}'s {_l2(l2)}, read from each run's l2_curve"] if read else \
        [f"linear probe: the runs' probes chose different l2 penalties ({own}); no shared l2 could be read"]
    return captions, warnings


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def present_columns(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> list[tuple[str, str]]:
    """The columns some row has a value for."""
    return [(k, t) for k, t in columns if any(r.get(k) is not None for r in rows)]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A Markdown table of summary rows (only the columns some row has a value for)."""
    cols = present_columns(rows, columns)
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# HTML pieces


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(data: bytes, caption: str) -> str:
    return f"<figure>{_img(data, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def result_section(command: str, record: dict[str, Any]) -> str:
    r = record["results"]
    if command == "separability":
        return sepr.tables_html(r)
    if command == "semantics":
        rows = [["linear probe top-1", r["linprobe"].get("top1")], ["kNN top-1", r["knn"].get("top1")],
                ["k-means NMI", r.get("nmi")]]
        return ("<h4>semantics</h4>" + _table(["metric", "value"], rows)
                + sepr.tables_html(r.get("separability", {}), "separability, same- vs different-class pairs"))
    raise ValueError(f"no section for {command!r} results")


def _probe_rows(r: dict[str, Any]) -> list[list[Any]]:
    rows = [["top-1", r.get("top1")], ["top-5", r.get("top5")]]
    if r.get("l2") is not None:
        sel = r.get("l2_selection")
        how = (f"chosen on {sel.get('val_images')} validation images of the training split"
               if isinstance(sel, dict) else "fixed (linprobe.l2)")
        rows.append(["L2 penalty", f"{r['l2']:g}, {how}" + (f" ({r['l2_rule']})" if r.get("l2_rule") else "")])
    curve = r.get("l2_curve")
    if curve:
        rows.append(["top-1 at each l2 of the grid", ", ".join(f"{g:g}: {t:.3f}"
                                                               for g, t in zip(curve["grid"], curve["top1"]))])
    return [row for row in rows if row[1] is not None]


def metric_table(command: str, r: dict[str, Any]) -> str:
    """A two-column table of a linprobe, kNN or fine-tune result, with named rows."""
    if command == "linprobe":
        rows = [["protocol", f"{r.get('mode')} ({r.get('pool')} pooling)"], *_probe_rows(r),
                ["training / test images", f"{r.get('train_images')} / {r.get('test_images')}"]]
        title = "linear probe"
    elif command == "knn":
        rows = [["top-1", r.get("top1")], ["top-5", r.get("top5")],
                ["k, temperature", f"{r.get('k')}, {r.get('temperature')}"],
                ["training / test images", f"{r.get('train_images')} / {r.get('test_images')}"]]
        title = "kNN"
    else:
        rows = [["top-1 (last epoch)", r.get("top1", r.get("final_top1"))],
                ["top-5 (last epoch)", r.get("top5", r.get("final_top5"))], ["epochs", r.get("epochs")],
                ["pooling", r.get("pool")],
                ["training / test images", f"{r.get('train_images')} / {r.get('test_images')}"]]
        title = "fine-tuning"
    rows = [row for row in rows if row[1] is not None]
    return f"<h4>{title}</h4>" + _table([title, "value"], rows)


CAPTIONS = {  # for figures without a figures.json entry (drawn by an older imae)
    "mixtures": "Mixtures of evaluation pairs across alpha, masked, and the model's reconstructions.",
    "mask-ratios": "Clean evaluation images masked at several ratios, and their reconstructions.",
    "ablation-grid": "The same pairs and masks through every checkpoint, side by side.",
    "weights": "Distribution of |w| over the encoders' weight matrices (log density).",
    "attention": "Attention of the cls token to each patch, per head.",
}
ORDER = ("mixtures", "mask-ratios", "attention", "ablation-grid", "weights")


def _kind(name: str) -> str:
    return next((k for k in ORDER if name.startswith(k)), name)


def collect_figures(runs: list[Path]) -> tuple[dict[str, list[tuple[bytes, str]]], list[tuple[bytes, str]]]:
    """Every PNG under the runs' eval/ folders, as (bytes, caption): those of one run by its name, and the
    figures that compare runs. ``figures.json`` says which run a figure shows; without it, the run whose
    folder holds it."""
    from imae.viz.figures import read_manifest

    names = {r.name for r in runs}
    own: dict[str, list[tuple[str, bytes, str]]] = {r.name: [] for r in runs}
    shared: list[tuple[str, bytes, str]] = []
    seen: set[bytes] = set()
    for run in runs:
        pngs = sorted((run / "eval").rglob("*.png")) if (run / "eval").is_dir() else []
        # a report written into the run's eval/ leaves its own headline.png (and a screenshot) there
        pngs = [p for p in pngs if not (p.parent == run / "eval" and p.name in REPORT_OUTPUTS)]
        manifests: dict[Path, dict[str, dict[str, Any]]] = {}
        for png in pngs:
            if png.parent not in manifests:
                manifests[png.parent] = {e["file"]: e for e in read_manifest(png.parent)}
            entry = manifests[png.parent].get(png.name)
            data = png.read_bytes()
            if data in seen:
                continue
            seen.add(data)
            caption = entry["caption"] if entry and entry.get("caption") else CAPTIONS.get(_kind(png.name), "")
            item = (png.name, data, caption)
            if entry is not None and entry.get("run") is None:
                shared.append(item)
            elif entry is not None and entry.get("run") in names:
                own[entry["run"]].append(item)
            elif entry is None and _kind(png.name) in ("ablation-grid", "weights"):
                shared.append(item)
            else:
                own[run.name].append(item)

    def ordered(items):
        return [(d, c) for _, d, c in sorted(items, key=lambda t: (ORDER.index(_kind(t[0])) if _kind(t[0]) in ORDER
                                                                   else len(ORDER), t[0]))]

    return {k: ordered(v) for k, v in own.items()}, ordered(shared)


def run_card(run: Path, row: dict[str, Any], figures: list[tuple[bytes, str]]) -> str:
    meta = [v for v in (row.get("kind") and {"mae": "MAE", "imae": "i-MAE"}.get(row["kind"], row["kind"]),
                        row.get("dataset") and f"data set {row['dataset']}",
                        row.get("epochs") and f"{row['epochs']} epochs") if v]
    parts = [f"<section class=card id=\"run-{html.escape(run.name)}\"><h2>{html.escape(run.name)}</h2>"
             f"<p class=meta>{html.escape(' · '.join(meta))}</p><p class=path>{html.escape(str(run))}</p>"]
    records = epoch_records(run)
    png = training_chart_png(records)
    if png is not None:
        parts.append("<h3>training</h3>" + _figure(png, f"Per-epoch means of {len(records)} epochs: every loss "
                                                        f"term on one axis (left); learning rate, mixing weight, "
                                                        f"same-class rate, time waiting for data and test "
                                                        f"accuracy where logged (right)."))
    res = run_results(run)
    if res:
        parts.append("<h3>evaluation</h3>")
        for command in ("separability", "semantics"):
            if command in res:
                parts.append(result_section(command, res[command]))
        for command in ("linprobe", "knn", "finetune"):
            if command in res:
                parts.append(metric_table(command, res[command]["results"]))
    if figures:
        parts.append("<h3>figures</h3>" + "".join(_figure(d, c) for d, c in figures))
    cfg = run / "config.yaml"
    if cfg.is_file():
        text = cfg.read_text(errors="replace")  # a damaged (binary) file is shown as it is, not a traceback
        parts.append(f"<details><summary>configuration (config.yaml)</summary><pre>{html.escape(text)}"
                     f"</pre></details>")
    return "".join(parts) + "</section>"


STYLE = """body{font-family:sans-serif;font-size:13px;margin:16px auto;max-width:1240px;padding:0 12px;color:#222}
h1{font-size:20px}h2{font-size:17px;margin:4px 0}h3{font-size:14px;margin:14px 0 4px}
h4{font-size:13px;margin:10px 0 2px}
.card{border:1px solid #ccc;border-radius:4px;padding:10px 14px;margin:16px 0}
.meta{margin:2px 0;color:#444}.path{color:#777;font-size:11px;margin:2px 0}
figure{margin:8px 0 14px}img{max-width:100%;height:auto}figcaption{font-size:12px;color:#444;max-width:900px}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}
pre{font-size:11px;max-height:300px;overflow:auto;background:#f6f6f6}.warn{color:#a00;font-weight:bold}"""


def seed_groups(runs: list[Path], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A mean-and-spread row for every set of runs whose configurations differ only in their seed (and whose
    seeds differ: two runs of one configuration and seed, such as a teacher and an untrained copy of its
    architecture, are not seed replicates)."""
    configs = {r.name: _config(r) for r in runs if (r / "config.yaml").is_file()}
    by_name = {row["run"]: row for row in rows}
    out = []
    for members in sepr.groups(configs):
        if len(members) > 1 and len({repr(configs[m].get("seed")) for m in members}) == len(members):
            name = re.sub(r"([-_](seed|s))?[-_]*$", "", os.path.commonprefix(members)) or members[0]
            out.append(sepr.group_row(name, [by_name[m] for m in members], GROUPED))
    return out


def separability_overview(runs: list[Path], rows: list[dict[str, Any]],
                          probe_warnings: tuple[str, ...] | list[str] = (),
                          referee: dict[str, str] | None = None) -> tuple[str, list[str], bytes | None]:
    """The warnings (rows scored against another reference or on other pairs, against a reference that is not a
    referee, by the old scheme; then ``probe_warnings``), every ``imae compare`` table found in the runs, and the
    headline figure (the un-mixing gain and sub-class accuracy against alpha; also returned as PNG bytes, None
    without separability results)."""
    warnings = sepr.flags(rows, referee) + list(probe_warnings)
    parts = [f"<p class=warn>⚠ {html.escape(w)}</p>" for w in warnings]
    results = [(r, run_results(r)) for r in runs]
    parts += [sepr.compare_html(res["compare"]["results"]) for _, res in results if "compare" in res]
    figure = sepr.headline_figure([(r.name, res["separability"]["results"]) for r, res in results
                                   if "separability" in res])
    if figure is not None:
        parts.append("<h3>separability against α</h3>" + _figure(
            figure, "Un-mixing gain of the subordinate (R² of its reference tokens from the mixture minus R² "
                    "from the partner image alone) against the mixing weight, each run with its 95% pair-bootstrap "
                    "band (left); dashed: the first run's pixels and untrained-encoder gains; dotted: the "
                    "superposition line, which holds for independent sources only. Right, where scored: accuracy "
                    "of the subordinate's class on different-class pairs, with the pixels, partner-image-only and "
                    "majority-class baselines."))
    depth = depth_figure([(r.name, res) for r, res in results])
    if depth is not None:
        parts.append("<h3>measures against depth</h3>" + _figure(
            depth, "Each headline measure read at the encoder blocks the runs were evaluated at (--layers; a "
                   "block's output with the final norm applied), with its 95% band: the pair-bootstrap interval "
                   "of the un-mixing gain, the Wilson interval over the test images of the probe and kNN "
                   "accuracies; k-means NMI has none."))
    return "".join(parts), warnings, figure


def write_report(runs: list[Path], out_dir: Path | None = None, reference: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` (and ``headline.png``, the separability figure, when a run has
    separability results); default folder: ``<run>/eval`` for one run, else ``report/`` in the runs' common
    parent folder. ``reference``: the referee every run's separability must have been scored against (a row
    scored against anything else is flagged with the command that rescores it). Nothing is written when no run
    is found."""
    runs = find_runs([Path(r) for r in runs])
    referee = None
    if reference is not None:
        from imae.eval.subject import load_subject

        ref = load_subject(reference)
        referee = {"sha256": ref.sha256, "label": ref.label, "path": str(reference)}
    if out_dir is None:
        out_dir = runs[0] / "eval" if len(runs) == 1 else \
            Path(os.path.commonpath([str(r.resolve()) for r in runs])) / "report"
    rows = [summary(r) for r in runs]
    captions, probe_warnings = shared_probe(rows)
    rows += seed_groups(runs, rows)
    table = markdown_table(rows)
    cols = present_columns(rows)
    summary_html = _table([t for _, t in cols], [[row.get(k) for k, _ in cols] for row in rows])
    summary_html += "".join(f"<p>{html.escape(c)}</p>" for c in captions)
    overview, warnings, headline = separability_overview(runs, rows, probe_warnings, referee)
    summary_html += overview
    if warnings or captions:
        table = "".join(f"> ⚠ {w}\n\n" for w in warnings) + "".join(f"> {c}\n\n" for c in captions) + table
    own, shared = collect_figures(runs)
    datasets = sorted({r["dataset"] for r in rows if r.get("dataset")})
    intro = (f"<p>{len(runs)} run(s)" + (f" on {', '.join(datasets)}" if datasets else "")
             + (". The runs use different data sets: compare their numbers with care." if len(datasets) > 1 else ".")
             + "</p>")
    comparison = ("<h2>comparing the runs</h2>" + "".join(_figure(d, c) for d, c in shared)) if shared else ""
    cards = "".join(run_card(r, row, own[r.name]) for r, row in zip(runs, rows))  # group rows have no card
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>imae report</title><style>{STYLE}</style>"
            f"</head><body><h1>imae report</h1>{intro}<h2>summary</h2>{summary_html}{comparison}{cards}"
            f"</body></html>")
    out_dir = make_output_dir(out_dir)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    files: dict[Path, bytes | str] = {html_path: page, md_path: table}
    if headline is not None:
        files[out_dir / "headline.png"] = headline
    write_files(files)
    return {"html": html_path, "md": md_path, **({"headline": out_dir / "headline.png"} if headline else {})}
