"""train.checkpoint_format=safetensors: weights without pickle, resume state beside them, kill-consistent."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import tiny_config
from imae import checkpoints as ckpt
from imae.checkpoints import safetensors_io
from imae.errors import CheckpointError
from imae.models.loading import model_from_checkpoint
from test_engine import _stop_after_first_epoch

pytest.importorskip("safetensors")


def test_safetensors_run_has_no_pickled_weights_and_resumes_bit_identically(tmp_path, monkeypatch):
    from imae.engine.train import pretrain

    fmt = {"train.checkpoint_format": "safetensors"}
    straight = pretrain(tiny_config(tmp_path / "a", **fmt))
    with monkeypatch.context() as m:
        _stop_after_first_epoch(m)
        stopped = pretrain(tiny_config(tmp_path / "b", **fmt))
    raw = torch.load(stopped / "checkpoint-last.pth", weights_only=True)
    assert "model" not in raw and raw["model_file"] == "checkpoint-last.safetensors" and "optimizer" in raw
    assert pretrain(tiny_config(tmp_path / "b", **fmt), resume="auto") == stopped
    a = ckpt.load(straight / "checkpoint-last.pth")["model"]
    b = ckpt.load(ckpt.latest_in(stopped))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = {p.name for p in stopped.glob("*.safetensors")}
    assert weights == {"checkpoint-last.safetensors", "checkpoint-2.safetensors"}
    # the weights file alone is a checkpoint too: its header holds the architecture
    alone = model_from_checkpoint(ckpt.load(stopped / "checkpoint-last.safetensors"))
    assert all(torch.equal(alone.state_dict()[k], b[k]) for k in b)


def test_split_checkpoint_killed_between_commit_and_rename_loads_the_new_weights(tmp_path):
    pth = tmp_path / "checkpoint-last.pth"
    old, new = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    safetensors_io.save_split({"model": old, "epoch": 0}, pth)
    before = safetensors_io.weights_path(pth).read_bytes()
    safetensors_io.save_split({"model": new, "epoch": 1}, pth)
    # as if killed after the .pth was renamed into place but before the weights were
    shutil.move(safetensors_io.weights_path(pth), safetensors_io.pending_path(pth))
    safetensors_io.weights_path(pth).write_bytes(before)
    ck = ckpt.load(pth)
    assert ck["epoch"] == 1 and torch.equal(ck["model"]["w"], new["w"])
    safetensors_io.pending_path(pth).unlink()
    with pytest.raises(CheckpointError, match="missing or from another save"):
        ckpt.load(pth)
