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
