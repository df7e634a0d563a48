"""The training monitor (``train.monitor_every``): frozen kNN / NMI (and an i-MAE's gain against its teacher)
in the epoch records, no effect on the weights, a failure is one line and training goes on, rank 0 only."""

from __future__ import annotations

import json

import torch

from conftest import tiny_config
from imae import checkpoints as ckpt
from imae.engine.monitor import TrainingMonitor


def _epochs(run) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r["kind"] == "epoch"]


def _weights(run) -> dict[str, torch.Tensor]:
    return ckpt.load(run)["model"]


def test_the_monitor_logs_its_measures_and_leaves_the_weights_bit_identical(tmp_path):
    from imae.engine.train import pretrain

    plain = pretrain(tiny_config(tmp_path / "plain"))
    watched = pretrain(tiny_config(tmp_path / "watched", **{"train.monitor_every": 1}))
    a, b = _weights(plain), _weights(watched)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = _epochs(watched)
    assert len(records) == 2
    for r in records:
        assert 0.0 <= r["monitor_knn_top1"] <= 1.0 and -0.01 <= r["monitor_nmi"] <= 1.0 and r["monitor_s"] > 0
        assert "monitor_gain_sub_vs_teacher" not in r  # an MAE has no teacher
    assert all("monitor_knn_top1" not in r for r in _epochs(plain))
    assert any((watched / "tb").iterdir())  # the epoch records also go to TensorBoard (epoch/monitor_*)

    # an i-MAE: also its un-mixing gain at alpha 0.3, labelled as scored against its teacher
    imae = pretrain(tiny_config(tmp_path / "imae", preset="digits-imae",
                                **{"imae.teacher": str(plain), "init_from": str(plain), "train.epochs": 1,
                                   "train.warmup_epochs": 0, "train.monitor_every": 1}))
    r = _epochs(imae)[-1]
    assert isinstance(r["monitor_gain_sub_vs_teacher"], float) and -1.0 <= r["monitor_gain_sub_vs_teacher"] <= 1.0


def test_a_monitor_failure_is_one_line_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from imae.engine.train import pretrain

    def fail(self):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(TrainingMonitor, "measure", fail)
    run = pretrain(tiny_config(tmp_path / "run", **{"train.monitor_every": 1}))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "training monitor failed" in line]
    assert len(warnings) == 2 and "out of memory" in warnings[0] and "training goes on" in warnings[0]
    assert "more detail" not in err
    assert len(_epochs(run)) == 2 and (run / "checkpoint-last.pth").is_file()
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"monitor_failed"' in x]
    assert len(events) == 2


def test_the_monitor_runs_on_rank_zero_every_n_epochs_only():
    class Cfg:
        class train:
            monitor_every = 3

    m = TrainingMonitor(Cfg, torch.nn.Linear(1, 1), torch.device("cpu"), is_main=True)
    assert [e + 1 for e in range(9) if m.due(e)] == [3, 6, 9]
    other = TrainingMonitor(Cfg, torch.nn.Linear(1, 1), torch.device("cpu"), is_main=False)
    assert not any(other.due(e) for e in range(9))
    metrics = {"loss": 1.0}
    other(2, metrics)  # another rank: nothing measured, nothing added
    assert metrics == {"loss": 1.0}
