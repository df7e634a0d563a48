"""The quickstart's evaluation part: both runs evaluated, the report written, the table printed."""

from __future__ import annotations

import json

from eval_fixtures import digits_runs
from imae.quickstart import QUICK_ALPHAS, evaluate_pair


def test_quickstart_evaluates_both_runs_writes_the_report_and_prints_the_table(tmp_path_factory, tmp_path, capsys):
    runs = digits_runs(tmp_path_factory)
    html = evaluate_pair(runs["mae"], runs["imae"], tmp_path, device="cpu")
    out = capsys.readouterr().out
    assert html == tmp_path / "report.html" and html.is_file() and (tmp_path / "report.md").is_file()
    assert out.strip().splitlines()[-1] == f"report: {html}"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| MAE") or line.startswith("| i-MAE")}
    assert set(rows) == {"MAE", "i-MAE"}
    for name, run in (("MAE", runs["mae"]), ("i-MAE", runs["imae"])):
        sep = json.loads((run / "eval" / "separability.json").read_text())["results"]
        lin = json.loads((run / "eval" / "linprobe.json").read_text())["results"]
        assert sep["alphas"] == list(QUICK_ALPHAS) and sep["reference"]["label"] == "mae"
        assert rows[name][1] == f"{sep['regression']['encoder']['sub_features']['0.3']['r2']:.3f}"
        assert rows[name][3] == f"{lin['top1']:.3f}"
    assert (runs["imae"] / "eval" / "figures" / "ablation-grid.png").is_file()
