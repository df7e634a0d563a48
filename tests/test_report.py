"""The report: one self-contained HTML page with every run's numbers and figures, and a Markdown table."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from eval_fixtures import FAST, digits_runs
from imae.eval.run import evaluate
from imae.viz.report import fmt, summary, write_report
from test_cli import assert_one_line_error, run_cli

# a result of the first scheme (version 1): the first digits study's a-mae-continued-s0 (git show
# 90d0846:studies/digits/results/a-mae-continued-s0/eval/separability.json, written without indentation)
LEGACY = Path(__file__).resolve().parent / "data" / "separability-v1.json"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    runs = digits_runs(tmp_path_factory)
    sets = [f"{k}={v}" for k, v in FAST.items()]
    for run in (runs["mae"], runs["imae"]):  # both against the MAE (one reference): the i-MAE's own teacher, labelled
        evaluate("separability", run, reference=str(runs["mae"]), sets=sets)
        evaluate("linprobe", run, sets=sets)
    from imae.viz.figures import make_figures

    make_figures([runs["imae"], runs["mae"]], sets=["figures.images=1", "separability.alphas=[0.3]"])
    return runs


def test_html_is_self_contained_and_holds_every_runs_numbers_and_figures(evaluated, tmp_path):
    paths = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|file:|/)""", page)  # nothing outside the page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    figures = list((evaluated["imae"] / "eval" / "figures").glob("*.png"))
    assert len(images) >= 2 + len(figures)  # two loss curves and every figure
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for run in ("mae", "imae"):
        s = summary(evaluated[run])
        assert fmt(s["sep_gain"]) in page and fmt(s["linprobe"]) in page  # the probe's own top-1 in the run's card
    assert "own branch map, no refit (sub)" in page and "train:" in page  # the i-MAE's branch row, the configuration
    assert "encoder (sub): un-mixing gain" in page and "R² sum" not in page and "(sum)" not in page
    assert "separability against α" in page and "not comparable" not in page  # headline figure; one reference
    # the same figure as a file beside the page, for a README
    assert paths["headline"] == tmp_path / "headline.png"
    assert base64.b64encode(paths["headline"].read_bytes()).decode() in images


def _md_rows(md: str) -> list[dict[str, str]]:
    """The rows of report.md's table (the lines above it are warnings and captions), by column title."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in lines[2:]]


def _curve_at(s: dict, l2: float) -> float:
    return next(t for g, t in zip(s["linprobe_curve"]["grid"], s["linprobe_curve"]["top1"]) if math.isclose(g, l2))


def test_markdown_table_has_one_row_per_run_with_its_numbers(evaluated, tmp_path):
    md = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)["md"].read_text()
    rows = _md_rows(md)
    assert len(rows) == 2 and "R² sum" not in md and "sum above 1" not in md
    first_l2 = summary(evaluated["mae"])["linprobe_l2"]
    differ = summary(evaluated["imae"])["linprobe_l2"] != first_l2
    assert ("the runs' probes chose different l2 penalties" in md) == differ
    for cells, run in zip(rows, ("mae", "imae")):
        s = summary(evaluated[run])
        assert cells["run"] == run and cells["kind"] == run and cells["headline α"] == "0.3"
        assert cells["un-mixing gain (sub)"] == fmt(s["sep_gain"]) != "–"
        lo, hi = s["sep_gain_ci"]
        assert cells["95% CI"] == f"[{lo:+.3f}, {hi:+.3f}]" and lo < s["sep_gain"] < hi
        assert s["sep_gain"] == pytest.approx(s["sep_r2_mixture"] - s["sep_r2_partner"])
        assert cells["R²(sub) from mixture"] == fmt(s["sep_r2_mixture"])
        assert cells["R²(sub) from partner alone"] == fmt(s["sep_r2_partner"])
        assert cells["pixels gain"] == fmt(s["sep_pixels_gain"]) != "–"
        assert cells["random-init gain"] == fmt(s["sep_random_init_gain"]) != "–"
        # the probe at one l2 for both (the first run's), whatever each chose
        assert cells["probe l2"] == f"{first_l2:g}"
        assert cells["linear probe"] == fmt(_curve_at(s, first_l2) if differ else s["linprobe"]) != "–"
    assert rows[0]["reference"] == "mae (scored against itself)"
    assert rows[1]["reference"] == "mae (scored against its own teacher)"
    assert rows[1]["own branch R²(sub)"] == fmt(summary(evaluated["imae"])["sep_branch_r2_sub"]) != "–"


def test_report_command_defaults_to_the_runs_eval_folder_and_rejects_missing_runs(evaluated, tmp_path, capsys):
    code, out, err = run_cli(["report", str(evaluated["mae"])], capsys)
    assert code == 0, err
    assert out.strip() == str(evaluated["mae"] / "eval" / "report.html")
    code, _, err = run_cli(["report", str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_a_row_scored_against_another_reference_is_flagged(evaluated, tmp_path):
    other = tmp_path / "other-ref"
    evaluate("separability", evaluated["mae"], reference=str(evaluated["imae"]),
             overrides={"output_dir": str(other / "eval")}, sets=[f"{k}={v}" for k, v in FAST.items()])
    (other / "config.yaml").write_text((evaluated["mae"] / "config.yaml").read_text())
    paths = write_report([evaluated["imae"], other], tmp_path / "report")
    page, md = paths["html"].read_text(), paths["md"].read_text()
    assert "⚠ other-ref: separability scored against reference imae" in page
    assert "> ⚠ other-ref: separability scored against reference imae" in md
    assert "its gain is not comparable" in md
    assert "other-ref: scored against" not in md  # the i-MAE is a referee for the MAE: no note


def test_a_row_scored_against_its_own_teacher_is_flagged_with_that_note(evaluated, tmp_path):
    paths = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)
    page, md = paths["html"].read_text(), paths["md"].read_text()
    for text in (page, md):
        assert "⚠ imae: scored against its own teacher (reference mae, not a referee)" in text
        assert "⚠ mae: scored against itself" in text  # an MAE's default reference is itself
    assert "mae (scored against its own teacher)" in page  # the note beside the row, and in the i-MAE's card
    assert "reference <b>mae</b> (sha256" in _card(page, "imae") and "scored against its own teacher" in _card(
        page, "imae")


def test_a_separability_result_of_the_old_scheme_is_read_and_flagged(evaluated, tmp_path):
    old = tmp_path / "old-mae"
    (old / "eval").mkdir(parents=True)
    shutil.copy(LEGACY, old / "eval" / "separability.json")
    assert "version" not in json.loads(LEGACY.read_text())["results"]  # a version-1 result
    paths = write_report([old, evaluated["mae"]], tmp_path / "report")
    page, md = paths["html"].read_text(), paths["md"].read_text()
    flag = "old-mae: separability measured by the old scheme (no un-mixing gain interval); rerun imae separability"
    assert f"> ⚠ {flag}" in md and f"⚠ {flag}" in page
    assert "old-mae: reference's role not recorded (old scheme)" in md  # version 1 knew only self and teacher
    assert "mae: separability scored against reference mae" in md  # another file than the old run's
    row = _md_rows(md)[0]
    s = summary(old)
    assert s["sep_legacy"] and s["sep_gain"] == pytest.approx(s["sep_r2_mixture"] - s["sep_r2_partner"])
    assert row["un-mixing gain (sub)"] == fmt(s["sep_gain"]) != "–" and row["95% CI"] == "–"
    assert "headline" in paths  # the old result is drawn too (without a band)


def test_runs_that_differ_only_in_the_seed_form_a_group_with_mean_and_spread(evaluated, tmp_path):
    import shutil

    import yaml

    runs = []
    for seed, run in enumerate(("a-s0", "a-s1")):
        d = tmp_path / run
        shutil.copytree(evaluated["imae"], d)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["seed"], cfg["output_dir"] = seed, str(d)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(d)
    lin = (runs[1] / "eval" / "linprobe.json")
    lin.write_text(lin.read_text().replace('"top1": ', '"top1": 0.5, "was": ', 1))
    group = _md_rows(write_report(runs, tmp_path / "report")["md"].read_text())[-1]
    first = summary(runs[0])
    assert group["run"] == "a (mean of 2 seeds)"
    assert group["linear probe"] == fmt((first["linprobe"] + 0.5) / 2)
    assert group["un-mixing gain (sub)"] == fmt(first["sep_gain"]) and group["sd over seeds"] == fmt(0.0)
    lo, hi = first["sep_gain_ci"]
    assert group["mean CI half-width"] == fmt((hi - lo) / 2)
    # the same configuration and seed twice (a teacher and an untrained copy of it) is no seed group
    cfg = yaml.safe_load((runs[1] / "config.yaml").read_text())
    (runs[1] / "config.yaml").write_text(yaml.safe_dump({**cfg, "seed": 0}))
    md = write_report(runs, tmp_path / "report2")["md"].read_text()
    assert "mean of" not in md


def _probe_copy(evaluated, root: Path, name: str, l2_index: int, curve: bool = True) -> Path:
    """A copy of the MAE run whose probe chose the ``l2_index``-th penalty of its grid (and kept its curve)."""
    run = root / name
    shutil.copytree(evaluated["mae"], run)
    path = run / "eval" / "linprobe.json"
    rec = json.loads(path.read_text())
    r = rec["results"]
    r["l2"], r["top1"] = r["l2_curve"]["grid"][l2_index], 0.999  # its own choice: never what the table shows
    if not curve:
        del r["l2_curve"]
    path.write_text(json.dumps(rec))
    return run


def test_probes_that_chose_different_penalties_are_shown_at_the_first_runs_penalty(evaluated, tmp_path):
    a = _probe_copy(evaluated, tmp_path / "runs", "p-a", 3)
    b = _probe_copy(evaluated, tmp_path / "runs", "p-b", 1)
    paths = write_report([a, b], tmp_path / "out")
    md, page = paths["md"].read_text(), paths["html"].read_text()
    l2 = summary(a)["linprobe_l2"]
    rows = _md_rows(md)
    assert [r["probe l2"] for r in rows] == [f"{l2:g}"] * 2
    assert [r["linear probe"] for r in rows] == [fmt(_curve_at(summary(x), l2)) for x in (a, b)]
    caption = f"the table shows every run's top-1 at one shared l2, p-a's {l2:g}, read from each run's l2_curve"
    assert caption in md and html.escape(caption) in page and "0.999" in md  # the own choices are named in the caption
    # a probe without a curve cannot be read at the shared penalty: flagged, never compared silently
    c = _probe_copy(evaluated, tmp_path / "runs", "p-c", 1, curve=False)
    md = write_report([a, c], tmp_path / "out2")["md"].read_text()
    assert "> ⚠ p-c: its linear probe's penalty" in md and "its top-1 is not comparable" in md


def test_a_comparison_shows_the_new_metrics_the_probe_curve_and_the_references_role(evaluated, tmp_path):
    from imae.eval.compare import reference_line
    from imae.eval.run import compare_checkpoints
    from imae.viz.separability_report import compare_html

    rec = compare_checkpoints(evaluated["mae"], evaluated["imae"], reference=str(evaluated["mae"]),
                              overrides={"output_dir": str(tmp_path)}, sets=[f"{k}={v}" for k, v in FAST.items()])
    results = rec["results"]
    page = compare_html(results)
    for metric in ("gain sub", "gain dom", "r2 sub", "partner r2 sub", "sub class acc", "linprobe", "knn"):
        assert f"<td>{metric}</td>" in page
    assert "imae: scored against its own teacher" in reference_line(results)
    assert reference_line(results) in page
    assert f"<td>l2 {results['metrics']['linprobe']['l2']:g}</td>" in page
    assert "linear probe top-1 at every l2 of the grid" in page
    assert all(f"<td>{k}</td>" in page for k in results["metrics"]["linprobe_curve"])
    assert "R² sum" not in page


def _card(page: str, run: str) -> str:
    start = page.index(f'<section class=card id="run-{run}">')
    return page[start:page.index("</section>", start)]


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_each_runs_figures_sit_in_its_own_card_with_captions(evaluated, tmp_path):
    write_report([evaluated["imae"]])  # one run: the report and its headline.png go into the run's eval/
    assert (evaluated["imae"] / "eval" / "headline.png").is_file()
    page = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)["html"].read_text()
    figures = evaluated["imae"] / "eval" / "figures"  # `imae figures IMAE MAE` drew both runs' figures here
    mae, imae = _card(page, "mae"), _card(page, "imae")
    assert _b64(figures / "mixtures-mae.png") in mae and _b64(figures / "mixtures-mae.png") not in imae
    assert _b64(figures / "mixtures-imae.png") in imae and _b64(figures / "attention-mae.png") in mae
    first_card = page.index("<section class=card")
    for shared in ("ablation-grid.png", "weights.png"):  # comparisons: above the cards, in neither
        assert page.index(_b64(figures / shared)) < first_card
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == len(re.findall(r"<figure>", page)) >= 2 + 8
    assert all(c.strip() and ".png" not in c for c in captions)
    assert "<th></th>" not in page  # every table has a header that names its columns


def test_training_chart_puts_loss_terms_on_one_axis_and_the_rest_on_small_labelled_charts(evaluated):
    from imae.viz.charts import training_chart
    from imae.viz.report import epoch_records

    fig = training_chart(epoch_records(evaluated["imae"]))
    loss_axis, *small = fig.axes
    assert {ln.get_label() for ln in loss_axis.get_lines()} == {"loss", "rec_sub", "rec_dom", "distill_sub",
                                                               "distill_dom"}
    titles = {a.get_title(): a for a in small}
    assert {"learning rate", "mixing weight alpha", "same-class pairs", "waiting for data"} <= set(titles)
    assert all(a.get_xlabel() == "epoch" and a.get_ylabel() for a in small)
    assert titles["same-class pairs"].get_lines()[0].get_ydata()[0] == 1.0  # digits-imae pairs same-class images
    mae_axes = training_chart(epoch_records(evaluated["mae"])).axes
    assert "mixing weight alpha" not in {a.get_title() for a in mae_axes}  # nothing to draw for an MAE


def _other_dataset_run(evaluated, root):
    """A copy of the MAE run's config and probe result, relabelled as a CIFAR-10 run."""
    import json
    import shutil

    run = root / "c10-mae"
    (run / "eval").mkdir(parents=True)
    cfg = (evaluated["mae"] / "config.yaml").read_text().replace("dataset: digits", "dataset: cifar10")
    (run / "config.yaml").write_text(cfg)
    rec = json.loads((evaluated["mae"] / "eval" / "linprobe.json").read_text())
    rec["data"]["dataset"] = "cifar10"
    (run / "eval" / "linprobe.json").write_text(json.dumps(rec))
    shutil.copy(evaluated["mae"] / "log.jsonl", run / "log.jsonl")
    return run


def test_report_across_data_sets_has_a_data_set_column(evaluated, tmp_path):
    other = _other_dataset_run(evaluated, tmp_path / "runs")
    paths = write_report([evaluated["mae"], other], tmp_path / "out")
    rows = _md_rows(paths["md"].read_text())
    assert [r["data set"] for r in rows] == ["digits", "cifar10"]
    page = paths["html"].read_text()
    assert "<th>data set</th>" in page and "different data sets" in page


def test_report_of_a_folder_of_runs_takes_each_run_and_of_an_empty_folder_writes_nothing(evaluated, tmp_path,
                                                                                       capsys):
    parent = evaluated["mae"].parent  # holds the mae and imae runs (and nothing else that is a run)
    code, out, err = run_cli(["report", str(parent), "--output-dir", str(tmp_path / "all")], capsys)
    assert code == 0, err
    md = (tmp_path / "all" / "report.md").read_text()
    assert "| mae |" in md and "| imae |" in md
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    code, _, err = run_cli(["report", str(empty)], capsys)
    assert_one_line_error(code, err, "no runs found")
    code, _, err = run_cli(["report", str(empty), "--output-dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "no runs found")
    assert sorted(p.name for p in empty.rglob("*")) == ["notes"] and not (tmp_path / "out").exists()


def test_full_disk_while_writing_the_report_is_one_line_and_keeps_the_earlier_report(evaluated, tmp_path, capsys,
                                                                                     monkeypatch):
    from conftest import disk_full_after_half

    args = ["report", str(evaluated["mae"]), "--output-dir", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"report.html", "report.md", "headline.png"}

    disk_full_after_half(monkeypatch)  # each file is half written, then the disk is full
    args.insert(2, str(evaluated["imae"]))  # a different page, were it written
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # intact, and no temporary file


def _render_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_render_checks_without_a_browser_catch_external_loads_broken_images_and_blank_pages(tmp_path):
    from PIL import Image

    rr = _render_script()
    assert rr.static_problems('<img src="data:image/png;base64,iVBORw0KGgo=">')  # a PNG signature, no image
    assert rr.static_problems('<img src="https://example.org/x.png">')
    white = tmp_path / "white.png"
    Image.new("RGB", (200, 300), "white").save(white)
    assert "differs from white" in rr.blank(white)  # says why the page looks blank
    log = '[1:1:1201/0:INFO:CONSOLE:1] "Uncaught ReferenceError: f", source: file:///r.html (1)\nother line'
    assert len(rr.console_errors(log)) == 1


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    rr = _render_script()
    if rr.find_chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    page = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)["html"]
    assert rr.main([str(page), "--out", str(tmp_path / "page.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "page.png") as im:
        assert im.width == 1280 and im.height > 2000  # the summary, two cards of charts, tables and figures
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", "<script>no_such_function()</script></body>"))
    assert rr.main([str(broken), "--out", str(tmp_path / "broken.png")]) == 1


def test_a_named_referee_flags_every_row_scored_against_something_else(evaluated, tmp_path, capsys):
    ref = evaluated["referee"]
    md = write_report([evaluated["mae"], evaluated["imae"]], tmp_path / "r", reference=ref)["md"].read_text()
    for run in ("mae", "imae"):  # both were scored against the MAE (the i-MAE's teacher), not the referee
        assert (f"{run}: separability scored against mae, not the referee referee; rescore it with imae "
                f"separability <run> --reference {ref}") in md
    md = write_report([evaluated["mae"], evaluated["imae"]], tmp_path / "m", reference=evaluated["mae"])["md"]
    assert "not the referee" not in md.read_text()  # both rows were scored against the file named
    code, out, err = run_cli(["report", str(evaluated["mae"]), "--reference", str(ref), "--output-dir",
                              str(tmp_path / "cli")], capsys)
    assert code == 0, err
    assert "not the referee referee" in (tmp_path / "cli" / "report.md").read_text()
