"""Training engine: schedule, parameter groups, accumulation, resume, checkpoints, logs."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from conftest import tiny_config, tiny_mae
from imae import checkpoints as ckpt
from imae.engine import loop as loop_mod
from imae.engine.train import pretrain
from imae.runtime.optim import absolute_lr, lr_at, param_groups


def test_lr_schedule_warmup_end_midpoint_and_end():
    base, lo = 1e-3, 1e-5
    assert lr_at(0.0, base, lo, 10, 110) == 0.0
    assert lr_at(5.0, base, lo, 10, 110) == pytest.approx(base / 2)
    assert lr_at(10.0, base, lo, 10, 110) == pytest.approx(base)
    assert lr_at(60.0, base, lo, 10, 110) == pytest.approx((base + lo) / 2)
    assert lr_at(110.0, base, lo, 10, 110) == pytest.approx(lo)
    assert absolute_lr(1.5e-4, None, 4096) == pytest.approx(2.4e-3)
    assert absolute_lr(1.5e-4, 0.01, 4096) == 0.01


def test_no_weight_decay_on_norms_biases_tokens_and_position_embeddings():
    m = tiny_mae()
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert {"cls_token", "mask_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= nd
    assert "pos_embed" not in d | nd  # frozen, not optimised at all
    assert {"blocks.0.attn.qkv.weight", "decoder_embed.weight", "patch_embed.proj.weight"} <= d
    assert not d & nd and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_run_directory_holds_config_logs_tensorboard_and_checkpoints(tmp_path):
    run = pretrain(tiny_config(tmp_path / "run", **{"train.save_every": 1}))
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "log.jsonl", "tb", "checkpoint-last.pth", "checkpoint-1.pth", "checkpoint-2.pth"} <= names
    assert list((run / "tb").iterdir())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["loss"] > 0 for r in epochs)
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 2 * 6 and steps[-1]["step"] == 12
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["epoch"] == 1 and ck["step_in_epoch"] == 0 and ck["global_step"] == 12
    assert ck["config"]["train"]["epochs"] == 2 and ck["kind"] == "mae" and "optimizer" in ck
    tiny = tiny_mae(embed_dim=32, depth=1, decoder_embed_dim=32, img_size=16, patch_size=2)
    tiny.load_state_dict(ck["model"], strict=True)  # the official layout


def test_accumulation_updates_even_on_a_loader_shorter_than_the_accumulation_count(tmp_path):
    cfg = tiny_config(tmp_path / "acc", **{"train.accum_iter": 4, "train.batch_size": 96, "train.epochs": 1,
                                           "train.warmup_epochs": 0})
    run = pretrain(cfg)
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["global_step"] == 1  # one batch per epoch, still one optimiser step
    torch.manual_seed(cfg.seed)
    from imae.engine.objectives import MAEObjective

    init = MAEObjective(cfg).model.state_dict()
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], ck["model"]["blocks.0.attn.qkv.weight"])


def _stop_after_first_epoch(monkeypatch):
    """Deliver the SIGTERM handling path after epoch 0, as if the job were pre-empted there."""
    original = loop_mod.Loop.run_epoch

    def run_epoch(self, epoch):
        ok = original(self, epoch)
        if epoch == 0:
            self.stop.signal = signal.SIGTERM
        return ok

    monkeypatch.setattr(loop_mod.Loop, "run_epoch", run_epoch)


def test_resume_after_one_epoch_gives_identical_weights(tmp_path, monkeypatch):
    straight = pretrain(tiny_config(tmp_path / "a"))
    with monkeypatch.context() as m:
        _stop_after_first_epoch(m)
        stopped = pretrain(tiny_config(tmp_path / "b"))
    half = ckpt.load(stopped / "checkpoint-last.pth")
    assert half["epoch"] == 0 and half["global_step"] == 6
    resumed = pretrain(tiny_config(tmp_path / "ignored"), resume=str(stopped))
    assert resumed == stopped
    a = ckpt.load(straight / "checkpoint-last.pth")["model"]
    b = ckpt.load(resumed / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_new_run_refuses_a_folder_with_checkpoints_and_resume_auto_continues(tmp_path):
    from imae.errors import ConfigError

    run = pretrain(tiny_config(tmp_path / "r", **{"train.epochs": 1, "train.warmup_epochs": 0}))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        pretrain(tiny_config(run))
    more = pretrain(tiny_config(run, **{"train.epochs": 2}), resume="auto", overrides={"train.epochs": 2})
    assert ckpt.load(more / "checkpoint-last.pth")["epoch"] == 1


def test_steps_redone_after_a_kill_are_drawn_once_in_tensorboard_and_epochs_counted_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from imae.viz.report import epoch_records

    run = pretrain(tiny_config(tmp_path / "r", **{"train.save_every": 1}))  # 2 epochs x 6 steps
    first = {e.step: e.value for e in _scalars(EventAccumulator, run, "train/loss")}
    assert sorted(first) == list(range(1, 13))
    # a SIGKILL late in epoch 2 (its epoch record already written) leaves checkpoint-1 as the newest
    (run / "checkpoint-last.pth").unlink()
    (run / "checkpoint-2.pth").unlink()
    pretrain(tiny_config(run), resume="auto")
    redone = _scalars(EventAccumulator, run, "train/loss")
    assert [e.step for e in redone] == list(range(1, 13))  # steps 7-12 once, from the resumed session
    assert [e.value for e in redone] == pytest.approx([first[s] for s in range(1, 13)], rel=1e-5)
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in lines) == 18  # log.jsonl keeps both tries, a resume event between
    assert [r["epoch"] for r in epoch_records(run)] == [1, 2]


def _scalars(accumulator, run, tag):
    acc = accumulator(str(run / "tb"))
    acc.Reload()
    return acc.Scalars(tag)
