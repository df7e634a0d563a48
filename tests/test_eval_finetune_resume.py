"""Fine-tuning survives pre-emption: SIGTERM checkpoints at the next step, and a resumed fine-tune (from a
mid-epoch stop, or from an epoch checkpoint after a SIGKILL) ends with the weights of an uninterrupted one,
with any number of loader workers. Real CIFAR-10, the whole augmentation recipe switched on."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_mae
from imae.errors import CheckpointError, ConfigError

EPOCHS = 3
# mixup/cutmix, RandAugment, random erasing and drop path all on: every random draw must resume exactly
SETS = ["data.train_per_class=12", "data.eval_per_class=3", "data.num_workers=0", "finetune.batch_size=24",
        "finetune.drop_path=0.1", "finetune.warmup_epochs=1", "finetune.log_every=1", "finetune.save_every=1",
        "num_heads=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    ck = tmp_path_factory.mktemp("ft-src") / "tiny.pth"
    torch.save({"model": tiny_mae().state_dict()}, ck)
    return ck


def _run(source: Path, cifar10_dir: Path, out: Path, resume: str | None = None, sets=()) -> Path:
    from imae.finetune import finetune

    overrides = {"data.dataset": "cifar10", "data.path": str(cifar10_dir), "device": "cpu", "output_dir": str(out),
                 "finetune.epochs": EPOCHS}
    return finetune(source, overrides=overrides, sets=[*SETS, *sets], resume=resume)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint-last.pth", weights_only=True)["model"]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "finetune.json").read_text())["results"]["history"]


def _stop_at(monkeypatch, at: float) -> None:
    """SIGTERM this process when the step at fractional epoch ``at`` sets its learning rate."""
    import imae.engine.loop as ft  # the shared training loop sets every step's learning rate

    real = ft.lr_at

    def lr_at(t, *args):
        if abs(t - at) < 1e-9:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(t, *args)

    monkeypatch.setattr(ft, "lr_at", lr_at)


@pytest.fixture(scope="module")
def uninterrupted(source, cifar10_dir, tmp_path_factory) -> Path:
    return _run(source, cifar10_dir, tmp_path_factory.mktemp("ft") / "whole")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigterm_mid_epoch_checkpoints_and_resume_matches_uninterrupted(source, cifar10_dir, uninterrupted, tmp_path,
                                                                        monkeypatch):
    _stop_at(monkeypatch, 1 + 2 / 5)  # SIGTERM during epoch 2, step 3 (1-based); 120 images / 24 = 5 steps
    run = _run(source, cifar10_dir, tmp_path / "ft")
    stopped = torch.load(run / "checkpoint-last.pth", weights_only=True)
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 3)  # epoch 1 done, 3 steps of epoch 2
    assert not (run / "finetune.json").exists()
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "stopped" and e["signal"] == "SIGTERM" for e in events)

    monkeypatch.undo()
    # the same command with --resume auto; two loader workers this time (augmentation is seeded per image)
    _run(source, cifar10_dir, tmp_path / "ft", resume="auto", sets=["data.num_workers=2"])
    _equal(_weights(run), _weights(uninterrupted))
    whole, resumed = _history(uninterrupted), _history(run)
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in whole], rel=1e-6)
    assert [h["test_top1"] for h in resumed] == [h["test_top1"] for h in whole]


def test_resume_from_an_epoch_checkpoint_after_a_kill_matches_uninterrupted(source, cifar10_dir, uninterrupted,
                                                                            tmp_path):
    # what a SIGKILL during epoch 2 leaves: the checkpoint written at the end of epoch 1
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(uninterrupted / "checkpoint-1.pth", killed / "checkpoint-last.pth")
    _run(source, cifar10_dir, tmp_path / "ignored", resume=str(killed))
    _equal(_weights(killed), _weights(uninterrupted))
    assert not (tmp_path / "ignored").exists()  # --resume RUN_DIR writes into that run


def _cli(source: Path, cifar10_dir: Path, out: Path, *extra: str) -> list[str]:
    """``imae finetune`` of the module's settings in a fresh process, refreshing checkpoint-last every 2 steps."""
    args = [sys.executable, "-m", "imae", "finetune", str(source), "--output-dir", str(out), "--device", "cpu",
            "--epochs", str(EPOCHS)]
    for item in (*SETS, "data.dataset=cifar10", f"data.path={cifar10_dir}", "finetune.save_every_steps=2"):
        args += ["--set", item]
    return args + list(extra)


def _last_step(run: Path) -> int:
    log = run / "log.jsonl"
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if '"kind": "step"' in x] \
        if log.exists() else []
    return steps[-1] if steps else 0


def test_sigkill_at_random_steps_then_resume_auto_matches_an_uninterrupted_run(source, cifar10_dir, tmp_path):
    # both runs in fresh processes with the same thread count, so that the kernels sum in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    res = subprocess.run(_cli(source, cifar10_dir, ref), capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rng = random.Random(0)
    first = rng.randrange(3, 7)  # of 15 steps (3 epochs x 5); the second kill lands in a later epoch
    kills, killed_at, resumed_from = [first, rng.randrange(first + 5, 14)], [], []
    run = tmp_path / "run"
    for target in kills:
        ck = run / "checkpoint-last.pth"
        resumed_from.append(torch.load(ck, weights_only=True)["global_step"] if ck.exists() else 0)
        p = subprocess.Popen(_cli(source, cifar10_dir, run, "--resume", "auto"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 300
        while _last_step(run) < target and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert p.poll() is None, f"the fine-tune ended before step {target}: {p.communicate()[1][-1500:]}"
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL
        killed_at.append(_last_step(run))
    assert resumed_from[1] > 0 and not (run / "finetune.json").exists()
    res = subprocess.run(_cli(source, cifar10_dir, run, "--resume", "auto"), capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _equal(_weights(run), _weights(ref))
    whole, resumed = _history(ref), _history(run)
    assert [h["test_top1"] for h in resumed] == [h["test_top1"] for h in whole]
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in whole], rel=1e-6)


def test_fine_tuning_writes_safetensors_checkpoints_of_the_same_weights(source, cifar10_dir, uninterrupted, tmp_path):
    pytest.importorskip("safetensors")
    from imae.checkpoints import load

    run = _run(source, cifar10_dir, tmp_path / "st", sets=["finetune.checkpoint_format=safetensors"])
    assert (run / "checkpoint-last.safetensors").is_file() and (run / f"checkpoint-{EPOCHS}.safetensors").is_file()
    assert "model" not in torch.load(run / "checkpoint-last.pth", weights_only=True)  # the weights live beside it
    _equal(load(run / "checkpoint-last.pth")["model"], _weights(uninterrupted))


def test_a_second_finetune_into_the_same_folder_is_refused_and_names_resume(source, cifar10_dir, uninterrupted):
    before = (uninterrupted / "checkpoint-last.pth").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds checkpoints; continue it with --resume .*whole "
                                          r"\(or --resume auto\)"):
        _run(source, cifar10_dir, uninterrupted)
    assert (uninterrupted / "checkpoint-last.pth").read_bytes() == before


def test_resume_refuses_a_pretraining_checkpoint(source, cifar10_dir, tmp_path):
    not_ft = tmp_path / "pretrain-run"
    not_ft.mkdir()
    torch.save({"model": tiny_mae().state_dict(), "kind": "mae", "config": {}}, not_ft / "checkpoint-last.pth")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint of `imae finetune`"):
        _run(source, cifar10_dir, tmp_path / "ft", resume=str(not_ft))


def test_resume_guards_a_changed_step_layout_fewer_epochs_and_unreadable_checkpoints(source, cifar10_dir,
                                                                                    uninterrupted, tmp_path,
                                                                                    monkeypatch):
    _stop_at(monkeypatch, 2 / 5)  # during epoch 1, step 3
    run = _run(source, cifar10_dir, tmp_path / "ft")
    assert torch.load(run / "checkpoint-last.pth", weights_only=True)["step_in_epoch"] == 3
    monkeypatch.undo()
    before = (run / "checkpoint-last.pth").read_bytes()
    # the rest of the epoch would be other batches: refused, nothing written
    with pytest.raises(ConfigError, match=r"stopped in the middle of an epoch with finetune.batch_size=24, "
                                          r"finetune.accum_iter=1 on 1 process\(es\); resume it with the same "
                                          r"\(now finetune.batch_size=12"):
        _run(source, cifar10_dir, run, resume="auto", sets=["finetune.batch_size=12"])
    assert (run / "checkpoint-last.pth").read_bytes() == before
    with pytest.raises(ConfigError, match=r"has already fine-tuned 3 epochs; --epochs must be at least that"):
        from imae.finetune import finetune

        finetune(source, overrides={"output_dir": str(uninterrupted), "finetune.epochs": 2}, resume="auto",
                 sets=["num_heads=2"])  # an official layout of width 64: its head count is always given
    # auto must not start over a folder whose checkpoints are all damaged, nor say "use --resume auto"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "checkpoint-last.pth").write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match=r"holds checkpoints but none can be read"):
        _run(source, cifar10_dir, damaged, resume="auto")
