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
    for run in runs.values():
        evaluate("separability", run, sets=sets)
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
        assert fmt(s["r2_sub_features"]) in page and fmt(s["linprobe"]) in page
    assert "branch_sub" in page and "train:" in page  # the i-MAE's branch table and the configuration


def test_markdown_table_has_one_row_per_run_with_its_numbers(evaluated, tmp_path):
    md = write_report([evaluated["mae"], evaluated["imae"]], tmp_path)["md"].read_text().splitlines()
    assert len(md) == 4 and md[1].startswith("|")
    header = [c.strip() for c in md[0].strip("|").split("|")]
    for line, run in zip(md[2:], ("mae", "imae")):
        cells = dict(zip(header, [c.strip() for c in line.strip("|").split("|")]))
        s = summary(evaluated[run])
        assert cells["run"] == run and cells["kind"] == run
        assert cells["R² sub feat. α=0.3"] == fmt(s["r2_sub_features"])
        assert cells["linear probe"] == fmt(s["linprobe"]) != "–"


def test_report_command_defaults_to_the_runs_eval_folder_and_rejects_missing_runs(evaluated, tmp_path, capsys):
    code, out, err = run_cli(["report", str(evaluated["mae"])], capsys)
    assert code == 0, err
    assert out.strip() == str(evaluated["mae"] / "eval" / "report.html")
    code, _, err = run_cli(["report", str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(code, err, "does not exist")
