"""The report: one self-contained HTML page with every run's numbers and figures, and a Markdown table."""

from __future__ import annotations

import base64
import re

import pytest

from eval_fixtures import FAST, digits_runs
from imae.eval.run import evaluate
from imae.viz.report import fmt, summary, write_report
from test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    runs = digits_runs(tmp_path_factory)
    sets = [f"{k}={v}" for k, v in FAST.items()]
    for run in runs.values():  # the i-MAE's pairs (p=1) for both, so that their rows are comparable
        evaluate("separability", run, sets=[*sets, "separability.same_class_p=1.0"])
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
        assert fmt(s["sep_r2_sub"]) in page and fmt(s["linprobe"]) in page
    assert "own branch map, no refit (sub)" in page and "train:" in page  # the i-MAE's branch row, the configuration
    assert "separability against α" in page and "⚠" not in page  # headline figure; one reference, no flag
    # the same figure as a file beside the page, for a README
    assert paths["headline"] == tmp_path / "headline.png"
    assert base64.b64encode(paths["headline"].read_bytes()).decode() in images


def test_markdown_table_has_one_row_per_run_with_its_numbers(evaluated, tmp_path):
    md = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)["md"].read_text().splitlines()
    assert len(md) == 4 and md[1].startswith("|")
    header = [c.strip() for c in md[0].strip("|").split("|")]
    for line, run in zip(md[2:], ("mae", "imae")):
        cells = dict(zip(header, [c.strip() for c in line.strip("|").split("|")]))
        s = summary(evaluated[run])
        assert cells["run"] == run and cells["kind"] == run
        assert cells["token R²(sub) α=0.3"] == fmt(s["sep_r2_sub"]) != "–"
        lo, hi = s["sep_r2_sub_ci"]
        assert cells["95% CI"] == f"[{lo:.3f}, {hi:.3f}]" and lo < s["sep_r2_sub"] < hi
        assert cells["linear probe"] == fmt(s["linprobe"]) != "–"


def test_report_command_defaults_to_the_runs_eval_folder_and_rejects_missing_runs(evaluated, tmp_path, capsys):
    code, out, err = run_cli(["report", str(evaluated["mae"])], capsys)
    assert code == 0, err
    assert out.strip() == str(evaluated["mae"] / "eval" / "report.html")
    code, _, err = run_cli(["report", str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_a_row_scored_against_another_reference_is_flagged(evaluated, tmp_path):
    other = tmp_path / "other-ref"
    evaluate("separability", evaluated["mae"], reference=str(evaluated["imae"]),
             overrides={"output_dir": str(other / "eval")},
             sets=[f"{k}={v}" for k, v in FAST.items()] + ["separability.same_class_p=1.0"])
    (other / "config.yaml").write_text((evaluated["mae"] / "config.yaml").read_text())
    paths = write_report([evaluated["imae"], other], tmp_path / "report")
    page, md = paths["html"].read_text(), paths["md"].read_text()
    assert "⚠ other-ref: separability scored against reference imae" in page
    assert md.startswith("> ⚠ other-ref: separability scored against reference imae")


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
    md = write_report(runs, tmp_path / "report")["md"].read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    group = dict(zip(header, [c.strip() for c in md[-1].strip("|").split("|")]))
    first = summary(runs[0])
    assert group["run"] == "a (mean of 2 seeds)"
    assert group["linear probe"] == fmt((first["linprobe"] + 0.5) / 2)
    assert group["token R²(sub) α=0.3"] == fmt(first["sep_r2_sub"]) and group["sd over seeds"] == fmt(0.0)
    # the same configuration and seed twice (a teacher and an untrained copy of it) is no seed group
    cfg = yaml.safe_load((runs[1] / "config.yaml").read_text())
    (runs[1] / "config.yaml").write_text(yaml.safe_dump({**cfg, "seed": 0}))
    md = write_report(runs, tmp_path / "report2")["md"].read_text()
    assert "mean of" not in md


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
    md = paths["md"].read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    rows = [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in md[2:]]
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
    import imae.viz.output as output

    args = ["report", str(evaluated["mae"]), "--output-dir", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"report.html", "report.md", "headline.png"}

    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "_write", full)
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
