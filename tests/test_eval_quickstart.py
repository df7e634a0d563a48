"""The quickstart's evaluation part: both runs evaluated, the report written, the table printed."""

from __future__ import annotations

import json
from pathlib import Path

from eval_fixtures import digits_runs
from imae.eval.separability_result import SeparabilityResult
from imae.quickstart import QUICK_ALPHAS, evaluate_runs


def test_quickstart_evaluates_the_runs_against_the_referee_and_prints_the_gain_difference(tmp_path_factory, tmp_path,
                                                                                          capsys):
    runs = digits_runs(tmp_path_factory)
    html = evaluate_runs(runs["mae"], None, runs["imae"], runs["referee"], tmp_path, device="cpu")
    out = capsys.readouterr().out
    assert html == tmp_path / "report.html" and html.is_file() and (tmp_path / "report.md").is_file()
    assert out.strip().splitlines()[-1] == f"report: {html}"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| MAE") or line.startswith("| i-MAE")}
    assert set(rows) == {"MAE (teacher)", "i-MAE"}
    l2 = json.loads((runs["referee"] / "eval" / "linprobe.json").read_text())["results"]["l2"]
    for name, run in (("MAE (teacher)", runs["mae"]), ("i-MAE", runs["imae"])):
        sep = json.loads((run / "eval" / "separability.json").read_text())["results"]
        lin = json.loads((run / "eval" / "linprobe.json").read_text())["results"]
        assert sep["alphas"] == list(QUICK_ALPHAS) and sep["reference"]["label"] == "referee"
        assert sep["reference"]["role"] == "referee" and sep["pairs"]["same_class_p"] == "random"
        assert sep["pairs"]["test"] == 72  # 40% of the 360 test digits, in disjoint pairs
        r = SeparabilityResult.from_json(sep)
        g = r.gain("sub", 0.3)
        assert rows[name][1] == f"{g['gain']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]"
        assert rows[name][2] == f"{r.r2('sub', 0.3)['r2']:.3f}" and rows[name][3] == f"{r.partner('sub')['r2']:.3f}"
        assert rows[name][4] == f"{r.gain('sub', 0.3, predictor='pixels')['gain']:+.3f}"
        assert rows[name][5] == f"{r.gain('sub', 0.3, predictor='random_init')['gain']:+.3f}"
        assert rows[name][6] == f"{lin['top1']:.3f}" and lin["l2"] == l2 and lin["l2_rule"] == "given"
    cmp = json.loads((runs["imae"] / "eval" / "compare.json").read_text())["results"]
    d = cmp["metrics"]["gain_sub"]["0.3"]
    assert f"subordinate at α=0.3 {d['diff']:+.3f}, 95% CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" in out
    assert (runs["imae"] / "eval" / "figures" / "ablation-grid.png").is_file()
    page = html.read_text()
    assert "<h3>imae minus mae</h3>" in page and f"{d['diff']:+.3f}" in page  # the comparison table


def test_a_stage_stopped_by_a_signal_ends_the_quickstart_before_the_next_starts(tmp_path, monkeypatch):
    import pytest

    from imae import quickstart

    def stopped_run(cfg, resume=None, overrides=None):
        run = Path(cfg.output_dir)
        run.mkdir(parents=True)
        events = [{"kind": "event", "event": "start"}, {"kind": "step", "loss": 1.0},
                  {"kind": "event", "event": "stopped", "signal": "SIGTERM"}]
        (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        started.append(run.name)
        return run

    started: list[str] = []
    monkeypatch.setattr(quickstart, "pretrain", stopped_run)
    with pytest.raises(SystemExit) as stop:
        quickstart.run(tmp_path, device="cpu")
    assert stop.value.code == 0 and started == ["mae"]  # the continued MAE and the i-MAE never started
    log = tmp_path / "mae" / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"kind": "event", "event": "resume"}) + "\n")
    assert not quickstart.stopped(tmp_path / "mae")
