"""Fault injection: kills, pre-emption, failed writes, broken data, untrusted checkpoints, lost peers, NaNs.

Each test records what it injected and what survived through the ``fault_case`` fixture (conftest.py);
``scripts/reliability_report.py`` runs every ``tests/test_faults*.py`` file and turns the records into
``docs/reliability.md``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETS, disk_full_after_half, pretrain_stopped_mid_epoch, tiny_config
from imae import checkpoints as ckpt
from imae.checkpoints.files import latest_complete
from imae.engine.train import pretrain
from imae.errors import CheckpointError, ConfigError, TrainingError

pytestmark = pytest.mark.faults


# 4 epochs x 6 steps of a small digits MAE; checkpoint-last every 2 optimiser steps
RUN_SETS = {**TINY_SETS, "model.embed_dim": 64, "model.depth": 2, "train.epochs": 4, "train.save_every_steps": 2,
            "train.save_every": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(out: Path, *extra: str, sets: dict | None = None) -> list[str]:
    args = [sys.executable, "-m", "imae", "pretrain", "--preset", "digits-mae", "--output-dir", str(out)]
    for k, v in {**RUN_SETS, **(sets or {})}.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def last_step(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    steps = [line for line in log.read_text().splitlines() if '"kind": "step"' in line]
    return int(steps[-1].split('"step": ')[1].split(",")[0].rstrip("}")) if steps else 0


def start_and_signal(cmd: list[str], run: Path, at_step: int, sig: int, env=ENV) -> subprocess.CompletedProcess:
    """Start a training process, deliver ``sig`` once its log shows ``at_step``, and wait for it."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while last_step(run) < at_step and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(run / "checkpoint-last.pth")["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run(cli(out), capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_sigkill_at_three_random_steps_then_resume_matches_uninterrupted(tmp_path, reference_run, fault_case):
    fault_case(injected="SIGKILL of the training process at 3 random optimiser steps, resumed each time "
                        "with --resume auto", expected="final weights identical to an uninterrupted run")
    run = tmp_path / "run"
    kills = sorted(random.Random(0).sample(range(3, 20), 3))
    resumed_from, killed_at = [], []
    for target in kills:
        before = latest_complete(run)
        resumed_from.append(0 if before is None else before[1]["global_step"])
        res = start_and_signal(cli(run, "--resume", "auto"), run, target, signal.SIGKILL)
        assert res.returncode == -signal.SIGKILL, f"the run ended before the kill at step {target}: {res.stderr[-500:]}"
        killed_at.append(last_step(run))
        ck = latest_complete(run)
        assert ck is not None  # the last complete checkpoint loads after every kill
    res = subprocess.run(cli(run, "--resume", "auto"), capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert same_weights(final_weights(run), final_weights(reference_run))
    fault_case(outcome=f"killed after logging steps {killed_at} (of 24); each restart resumed from the newest "
                       f"checkpoint (steps {resumed_from[1:]} for the 2nd and 3rd); final weights identical",
               lost="the steps since the last checkpoint (checkpoints every 2 steps here), redone identically")


def test_sigterm_mid_epoch_checkpoints_exits_0_and_resume_matches(tmp_path, reference_run, fault_case):
    fault_case(injected="SIGTERM in the middle of epoch 2",
               expected="final checkpoint written, exit status 0, resume gives the uninterrupted weights")
    run = tmp_path / "run"
    res = start_and_signal(cli(run, sets={"train.save_every_steps": 0}), run, 9, signal.SIGTERM)
    assert res.returncode == 0, res.stderr[-1500:]
    assert f"imae pretrain --resume {run}" in res.stderr
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["step_in_epoch"] > 0 and ck["global_step"] >= 9  # a mid-epoch checkpoint
    res = subprocess.run(cli(run, "--resume", str(run), sets={"train.save_every_steps": 0}), capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-1500:]
    assert same_weights(final_weights(run), final_weights(reference_run))
    fault_case(outcome=f"stopped with status 0 at step {ck['global_step']} (epoch {ck['epoch'] + 2}, step "
                       f"{ck['step_in_epoch']} of 6); resumed; final weights identical", lost="nothing")


@pytest.mark.parametrize("fault", ["disk_full", "permission_denied"])
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fault_case, fault):
    what = {"disk_full": "disk full (ENOSPC) half-way through writing", "permission_denied":
            "permission denied (EACCES) when opening"}[fault]
    fault_case(injected=f"{what} the epoch-2 checkpoint",
               expected="clear error, previous checkpoint intact and loadable, no partial file left")
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] <= 2:  # epoch 1 writes checkpoint-last and checkpoint-1
            return real_save(obj, f, *a, **k)
        if fault == "permission_denied":
            raise PermissionError(errno.EACCES, "Permission denied")
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    cfg = tiny_config(tmp_path / "run", **{"train.save_every": 1})
    with pytest.raises(TrainingError) as e:
        pretrain(cfg)
    cause = "No space left on device" if fault == "disk_full" else "Permission denied"
    assert cause in str(e.value) and "the previous checkpoint is intact" in str(e.value)
    monkeypatch.setattr(torch, "save", real_save)
    ck = ckpt.load(tmp_path / "run" / "checkpoint-last.pth")
    assert ck["epoch"] == 0 and not list((tmp_path / "run").glob(".*tmp*"))
    resumed = pretrain(tiny_config(tmp_path / "x"), resume=str(tmp_path / "run"))
    assert ckpt.load(resumed / "checkpoint-last.pth")["epoch"] == 1
    fault_case(outcome=f"TrainingError '... ({cause}); the previous checkpoint is intact'; checkpoint-last.pth "
                       f"of epoch 1 loads and resumes", lost="the epoch whose checkpoint failed (redone on resume)")


def test_truncated_and_empty_jpegs_error_by_default_and_are_skipped_and_counted(tmp_path, cifar10_dir, fault_case):
    fault_case(injected="a truncated JPEG and a zero-byte file in the training folder",
               expected="one-line error naming the file; --skip-corrupt skips them and reports the count")
    root = tmp_path / "data" / "train"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for f in sorted((cifar10_dir / "train" / c).iterdir())[:20]:
            shutil.copy(f, root / c / f.name)
    good = sorted((root / "cat").iterdir())[0].read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "zero.jpg").write_bytes(b"")
    base = [sys.executable, "-m", "imae", "pretrain", "--preset", "cifar10-mae-tiny", "--data-path",
            str(root.parent), "--set", "data.dataset=imagefolder", "--set", "data.cache_dir=none", "--set",
            "model.depth=1", "--set", "model.decoder_depth=1", "--set", "train.batch_size=8", "--epochs", "1",
            "--device", "cpu"]
    res = subprocess.run([*base, "--output-dir", str(tmp_path / "a")], capture_output=True, text=True, env=ENV)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("imae: error: cannot decode image")
    assert ("truncated.jpg" in res.stderr) or ("zero.jpg" in res.stderr)
    res = subprocess.run([*base, "--output-dir", str(tmp_path / "b"), "--skip-corrupt"], capture_output=True,
                         text=True, env=ENV)
    assert res.returncode == 0, res.stderr[-1500:]
    assert "skipped 2 unreadable image(s)" in res.stderr and "2 unreadable file(s) skipped" in res.stderr
    epoch = [x for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x][0]
    assert '"skipped_files": 2.0' in epoch
    fault_case(outcome="exit 2 with 'cannot decode image .../truncated.jpg'; with --skip-corrupt 40 images "
                       "trained, 2 skipped and reported at load and in the epoch record", lost="nothing")


def test_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path, fault_case):
    fault_case(injected="a .pth whose pickle calls os.system, given as --init-from, --teacher and --resume",
               expected="refused with a clear error; the code never runs")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil()}, evil)
    for args in (["--init-from", str(evil)], ["--resume", str(evil)]):
        res = subprocess.run([sys.executable, "-m", "imae", "pretrain", "--output-dir", str(tmp_path / "o"), *args],
                             capture_output=True, text=True, env=ENV)
        assert res.returncode == 2 and "refusing to load" in res.stderr and "posix.system" in res.stderr
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load(evil)
    res = subprocess.run([sys.executable, "-m", "imae", "pretrain", "--preset", "digits-imae", "--teacher", str(evil),
                          "--output-dir", str(tmp_path / "o2")], capture_output=True, text=True, env=ENV)
    assert res.returncode == 2 and "refusing to load" in res.stderr
    assert not marker.exists()
    fault_case(outcome="all three refused with 'refusing to load ... posix.system'; marker file never created",
               lost="nothing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, port: int) -> dict:
    return {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_lost_peer_stops_the_other_rank_within_60s(tmp_path, fault_case):
    fault_case(injected="SIGKILL of rank 1 of a 2-process gloo run (a) launched by torchrun, (b) launched "
                        "without an agent", expected="the other rank ends with an error within 60 s; "
                                                     "the last checkpoint stays loadable")
    sets = {"train.epochs": 40, "train.batch_size": 8}
    # (a) torchrun: its agent tears the job down
    run = tmp_path / "a"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           *cli(run, sets=sets)[1:]]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while last_step(run) < 8 and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"the run ended before step 8: {p.communicate()[1][-1500:]}"
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(kids[-1]), signal.SIGKILL)
    t0 = time.time()
    p.communicate(timeout=120)
    torchrun_s = time.time() - t0
    assert p.returncode != 0 and torchrun_s < 60
    assert latest_complete(run) is not None
    # (b) two plain processes: the survivor's next collective fails and it stops with one line
    run, port = tmp_path / "b", _free_port()
    procs = [subprocess.Popen(cli(run, sets=sets), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_rank_env(r, port)) for r in (0, 1)]
    deadline = time.time() + 120
    while last_step(run) < 8 and procs[0].poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert procs[0].poll() is None, f"rank 0 ended before step 8: {procs[0].communicate()[1][-1500:]}"
    procs[1].kill()
    t0 = time.time()
    _, err = procs[0].communicate(timeout=120)
    plain_s = time.time() - t0
    procs[1].communicate()
    assert procs[0].returncode == 1 and plain_s < 60, err[-1500:]
    assert "imae: error: rank 0 lost contact with another training process" in err and "Traceback" not in err
    assert latest_complete(run) is not None
    fault_case(outcome=f"(a) torchrun ended with an error after {torchrun_s:.1f} s; (b) rank 0 stopped with "
                       f"'lost contact ...' (status 1) after {plain_s:.1f} s; checkpoints loadable",
               lost="the steps since the last checkpoint")


def test_ranks_started_with_different_configurations_stop_at_start(tmp_path, fault_case):
    fault_case(injected="rank 1 launched with --seed 1, rank 0 with --seed 0",
               expected="both stop at start with a clear error")
    port = _free_port()
    procs = [subprocess.Popen(cli(tmp_path / "run", "--seed", str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_rank_env(r, port)) for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert all("ranks [1] were started with a configuration different from rank 0's" in e for e in errs)
    assert not list((tmp_path / "run").glob("checkpoint*"))
    fault_case(outcome="both ranks exit 2 with 'ranks [1] were started with a configuration different from "
                       "rank 0's' before training", lost="nothing")


def test_nonfinite_loss_stops_or_is_skipped(tmp_path, monkeypatch, fault_case):
    fault_case(injected="the loss turns NaN at step 9 (and once more with --skip-nonfinite 1)",
               expected="stop naming the step, the loss terms and the last good checkpoint; or skip the update")
    from imae.engine import objectives

    real = objectives.MAEObjective.__call__
    count = {"n": 0}

    def nan_at_nine(self, net, batch, mask_ratio=None):
        out = real(self, net, batch, mask_ratio)
        count["n"] += 1
        return {"loss": out["loss"] * float("nan")} if count["n"] == 9 else out

    monkeypatch.setattr(objectives.MAEObjective, "__call__", nan_at_nine)
    with pytest.raises(TrainingError) as e:
        pretrain(tiny_config(tmp_path / "a"))
    msg = str(e.value)
    assert "non-finite at epoch 2 step 3 (loss=nan)" in msg and f"{tmp_path / 'a' / 'checkpoint-last.pth'}" in msg
    assert ckpt.load(tmp_path / "a" / "checkpoint-last.pth")["epoch"] == 0
    count["n"] = 0
    run = pretrain(tiny_config(tmp_path / "b", **{"train.skip_nonfinite": 1}))
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["nonfinite_skipped"] == 1 and ck["global_step"] == 12
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert '"event": "nonfinite"' in (run / "log.jsonl").read_text()
    fault_case(outcome="stopped with 'loss became non-finite at epoch 2 step 3 (loss=nan); last good checkpoint: "
                       "...'; with --skip-nonfinite 1 the update was skipped and training finished with finite "
                       "weights", lost="nothing (the bad update is never applied)")


def test_resume_auto_skips_a_damaged_checkpoint_and_partial_writes(tmp_path, fault_case):
    fault_case(injected="checkpoint-last.pth truncated and a half-written temporary file left in the run folder",
               expected="--resume auto continues from the newest complete checkpoint; the partial file is removed")
    run = pretrain(tiny_config(tmp_path / "run", **{"train.save_every": 1}))
    data = (run / "checkpoint-last.pth").read_bytes()
    (run / "checkpoint-last.pth").write_bytes(data[:1000])
    (run / ".checkpoint-last.pth.tmp999").write_bytes(data[:500])
    path, ck = latest_complete(run)
    assert path.name == "checkpoint-2.pth" and ck["epoch"] == 1  # 1-based names; the key counts from 0
    again = pretrain(tiny_config(run, **{"train.epochs": 3}), resume="auto", overrides={"train.epochs": 3})
    assert ckpt.load(again / "checkpoint-last.pth")["epoch"] == 2
    assert not list(run.glob(".*tmp*"))
    fault_case(outcome="picked checkpoint-2.pth, trained epoch 3, removed the partial file", lost="nothing")


def test_keep_last_keeps_only_the_newest_numbered_checkpoints(tmp_path):
    run = pretrain(tiny_config(tmp_path / "run", **{"train.epochs": 4, "train.save_every": 1, "train.keep_last": 2}))
    assert sorted(p.name for p in run.glob("checkpoint-*.pth")) == ["checkpoint-3.pth", "checkpoint-4.pth",
                                                                     "checkpoint-last.pth"]


def _signal_group_after(cmd: list[str], run: Path, at_step: int, cwd: Path) -> subprocess.CompletedProcess:
    """Start ``cmd`` in its own process group and SIGTERM the whole group (as torchrun and schedulers do)
    once its log shows ``at_step``."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd,
                         start_new_session=True)
    deadline = time.time() + 180
    while last_step(run) < at_step and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"the run ended before step {at_step}: {p.communicate()[1][-1500:]}"
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=180)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_sigterm_to_the_process_group_with_loader_workers_still_checkpoints(tmp_path, cifar10_dir, fault_case):
    fault_case(injected="SIGTERM to the whole process group (main process and 2 DataLoader workers) of "
                        "(a) a pre-training on image files, (b) a fine-tune",
               expected="workers ignore it; the main process checkpoints and exits 0; the run resumes")
    tree = tmp_path / "tree"
    for split, n in (("train", 48), ("test", 4)):
        for c in ("cat", "dog"):
            (tree / split / c).mkdir(parents=True)
            for f in sorted((cifar10_dir / split / c).iterdir())[:n]:
                shutil.copy(f, tree / split / c / f.name)
    # (a) pre-training through the file loader (ImageNet's path): workers decode and crop
    run = tmp_path / "pt"
    files = {"data.dataset": "imagefolder", "data.path": str(tree), "data.in_memory": False, "data.num_workers": 2,
             "data.max_per_class": "null", "train.epochs": 40, "train.save_every_steps": 0}
    res = _signal_group_after(cli(run, sets=files), run, 3, tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "stopped by SIGTERM" in res.stderr
    stopped = ckpt.load(run / "checkpoint-last.pth")
    res = subprocess.run(cli(run, "--resume", "auto", sets={**files, "train.epochs": stopped["epoch"] + 2}),
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # (b) fine-tuning: workers run timm's augmentation
    src = tmp_path / "mae.pth"
    torch.save({"model": ckpt.load(run / "checkpoint-last.pth")["model"]}, src)
    ft = tmp_path / "ft"
    cmd = [sys.executable, "-m", "imae", "finetune", str(src), "--data-path", str(tree), "--set",
           "data.dataset=imagefolder", "--set", "data.img_size=16", "--output-dir", str(ft), "--epochs", "40",
           "--device", "cpu", "--set", "data.num_workers=2", "--set", "finetune.batch_size=16", "--set",
           "finetune.log_every=1", "--set", f"num_heads={RUN_SETS['model.num_heads']}"]
    res = _signal_group_after(cmd, ft, 3, tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"imae finetune {src} --resume {ft}" in res.stderr
    ft_ck = ckpt.load(ft / "checkpoint-last.pth")
    assert (ft_ck["epoch"] + 1) * 6 + ft_ck["step_in_epoch"] >= 3  # 96 images / 16 = 6 steps an epoch
    fault_case(outcome=f"(a) pre-training stopped with status 0 after {stopped['global_step']} steps and resumed; "
                       f"(b) the fine-tune stopped with status 0 after {ft_ck['epoch'] + 1} epoch(s) and "
                       f"{ft_ck['step_in_epoch']} step(s); no traceback", lost="nothing")


# ----------------------------------------------------------------------------------------------
# data sets: class lists, links, image formats


def _tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """An ImageFolder tree of small random RGB PNGs: {split: {class: images}} (0 images: an empty folder)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, classes in layout.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(px).save(root / split / c / f"{c}{i}.png")
    return root


def test_a_class_folder_in_one_split_only_does_not_shift_labels(tmp_path, capsys, fault_case):
    fault_case(injected="an empty class folder in train/ only (aaa/, sorted first), and a class with images in "
                        "test/ only (zebra/)",
               expected="one class list for both splits; empty classes reported; a test class without training "
                        "images refused with a one-line error")
    from imae.data.datasets import load_split
    from imae.errors import DataError

    root = _tree(tmp_path / "d", {"train": {"aaa": 0, "cat": 3, "dog": 3}, "test": {"cat": 2, "dog": 2}})
    train = load_split("imagefolder", "train", str(root), 16, cache_dir="none")
    test = load_split("imagefolder", "eval", str(root), 16, cache_dir="none")
    assert train.classes == test.classes == ["aaa", "cat", "dog"]
    assert test.labels.tolist() == [1, 1, 2, 2] and train.labels.tolist() == [1] * 3 + [2] * 3
    assert "note: 1 class(es) have no images in" in capsys.readouterr().err
    _tree(root, {"test": {"zebra": 1}})
    with pytest.raises(DataError, match=r"has images of class\(es\) zebra that .*train has none of"):
        load_split("imagefolder", "eval", str(root), 16, cache_dir="none")
    fault_case(outcome="train and test share ['aaa', 'cat', 'dog'] (cat = 1 in both); 'note: 1 class(es) have no "
                       "images'; test/zebra refused: 'has images of class(es) zebra that .../train has none of'",
               lost="nothing")


def test_a_symlink_loop_in_the_data_is_not_followed(tmp_path, capsys, fault_case):
    fault_case(injected="a directory link back into the tree (train/frog/loop -> train/frog)",
               expected="each folder read once; the skipped link reported")
    from imae.data.datasets import load_split

    root = _tree(tmp_path / "d", {"train": {"cat": 3, "frog": 4}})
    (root / "train" / "frog" / "loop").symlink_to(root / "train" / "frog", target_is_directory=True)
    train = load_split("imagefolder", "train", str(root), 16, cache_dir="none")
    assert len(train) == 7 and train.labels.tolist() == [0] * 3 + [1] * 4
    err = capsys.readouterr().err
    assert "note: skipped 1 link(s) under" in err and "frog/loop" in err
    fault_case(outcome="7 images read (not 7 + 4 per level of loop/loop/...); 'note: skipped 1 link(s) ... "
                       "frog/loop'", lost="nothing")


class _InfGrad(torch.autograd.Function):
    """Identity forward; infinite gradients backward (a finite loss whose gradients overflow)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_nonfinite_gradients_of_a_finite_loss_are_never_applied(tmp_path, monkeypatch, fault_case):
    fault_case(injected="a finite loss with infinite gradients at step 9 (and a NaN written into a weight at step 9 "
                        "of another run)",
               expected="the update is skipped or the run stops naming a last good checkpoint that is good; no "
                        "checkpoint ever holds a non-finite weight")
    from imae.engine import objectives

    real = objectives.MAEObjective.__call__
    count = {"n": 0, "mode": "grad"}

    def bad_at_nine(self, net, batch, mask_ratio=None):
        out = real(self, net, batch, mask_ratio)
        count["n"] += 1
        if count["n"] == 9 and count["mode"] == "grad":
            return {**out, "loss": _InfGrad.apply(out["loss"])}
        if count["n"] == 9 and count["mode"] == "weight":
            next(self.model.parameters()).data.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(objectives.MAEObjective, "__call__", bad_at_nine)
    run = pretrain(tiny_config(tmp_path / "skip", **{"train.skip_nonfinite": 1}))
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["nonfinite_skipped"] == 1 and ck["global_step"] == 12
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    count["n"] = 0
    with pytest.raises(TrainingError) as e:
        pretrain(tiny_config(tmp_path / "stop"))
    assert "gradient norm became non-finite at epoch 2 step 3 (grad_norm=" in str(e.value)
    assert f"last good checkpoint: {tmp_path / 'stop' / 'checkpoint-last.pth'}" in str(e.value)
    good = ckpt.load(tmp_path / "stop" / "checkpoint-last.pth")
    assert good["epoch"] == 0 and all(torch.isfinite(v).all() for v in good["model"].values())
    count["n"], count["mode"] = 0, "weight"
    with pytest.raises(TrainingError, match=r"the weights became non-finite \(.*\) after 9 steps; no checkpoint "
                                            r"written; last good checkpoint: .*checkpoint-last.pth"):
        pretrain(tiny_config(tmp_path / "w", **{"train.save_every_steps": 1}))
    w = ckpt.load(tmp_path / "w" / "checkpoint-last.pth")
    assert w["global_step"] == 8 and all(torch.isfinite(v).all() for v in w["model"].values())
    fault_case(outcome="--skip-nonfinite 1: the update skipped, finite weights; otherwise 'gradient norm became "
                       "non-finite at epoch 2 step 3 (grad_norm=inf; ...); last good checkpoint: ...' whose weights "
                       "are finite; a NaN weight: 'no checkpoint written', checkpoint of step 8 kept",
               lost="nothing (the bad update is never applied or saved)")


def test_a_second_writer_into_a_live_run_folder_is_refused(tmp_path, fault_case):
    fault_case(injected="a second run into the --output-dir of a run that has not checkpointed yet; a --resume "
                        "auto into a live run's folder; then SIGKILL of the live run and --resume auto again",
               expected="both second writers refused in one line while the run lives; the dead run's lock is "
                        "taken over")
    from imae.engine.run_dir import RunLock

    run = tmp_path / "run"
    run.mkdir()

    def refusal(pid: int) -> str:
        return (f"imae: error: {run} is in use by another imae process (pid {pid}); wait for it to end, or choose "
                f"another --output-dir")

    with RunLock(run):  # a run that holds its folder but has written no checkpoint yet
        res = subprocess.run(cli(run, "--seed", "1"), capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == refusal(os.getpid()), res.stderr[-1500:]
    assert not list(run.glob("checkpoint*")) and not (run / "log.jsonl").exists()
    live = subprocess.Popen(cli(run, sets={"train.epochs": 100000}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while last_step(run) < 2 and live.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    res = subprocess.run(cli(run, "--resume", "auto"), capture_output=True, text=True, env=ENV, timeout=120)
    assert live.poll() is None, live.communicate()[1][-1500:]
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == refusal(live.pid), res.stderr[-1500:]
    live.kill()
    live.communicate()
    done = latest_complete(run)[1]["epoch"] + 1
    res = subprocess.run(cli(run, "--resume", "auto", sets={"train.epochs": done + 1}), capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-1500:]
    assert ckpt.load(run / "checkpoint-last.pth")["epoch"] == done, res.stderr
    # fine-tuning takes the same lock
    from imae.finetune import finetune

    ft = tmp_path / "ft"
    ft.mkdir()
    with RunLock(ft), pytest.raises(ConfigError, match=f"is in use by another imae process \\(pid {os.getpid()}\\)"):
        finetune(run, overrides={"output_dir": str(ft), "device": "cpu", "finetune.epochs": 1})
    assert not list(ft.glob("checkpoint*")) and not (ft / "log.jsonl").exists()
    fault_case(outcome="both refused: '<run> is in use by another imae process (pid N); wait for it to end, or "
                       "choose another --output-dir' (a fine-tune too); after the SIGKILL, --resume auto took the "
                       "lock over and trained one more epoch", lost="nothing")


# ----------------------------------------------------------------------------------------------
# caches


def _damage_middle(path: Path, fill: int) -> None:
    """Overwrite bytes 20-40 % of the file: inside the first (largest) tensor's data, past the zip headers."""
    data = bytearray(path.read_bytes())
    lo, hi = len(data) // 5, 2 * len(data) // 5
    data[lo:hi] = bytes([fill]) * (hi - lo)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fill", [0x00, 0x7F])
def test_a_damaged_cache_entry_is_recomputed_not_trusted(tmp_path, capsys, fault_case, fill):
    fault_case(injected=f"a fifth of a cached feature file and of a decoded-image cache file overwritten "
                        f"with 0x{fill:02x} bytes (torch.load does not check the zip CRC)",
               expected="the checksum of the entry's tensors mismatches: one warning line, recomputed, results "
                        "identical to a fresh computation")
    from conftest import tiny_mae
    from imae.config.evaluate import EvalDataConfig
    from imae.data.datasets import load_split
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import FeatureCache, extract

    torch.manual_seed(0)
    model = tiny_mae(img_size=16)
    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=30), "eval", 16, progress=False)
    cache = FeatureCache(tmp_path / "features")
    fresh = extract(model, split, "tiny", cache=cache, show_progress=False)
    (entry,) = (tmp_path / "features").glob("*.pt")
    _damage_middle(entry, fill)
    again = extract(model, split, "tiny", cache=cache, show_progress=False)
    assert not again.cached and torch.equal(again.cls, fresh.cls) and torch.equal(again.mean, fresh.mean)
    assert capsys.readouterr().err.count("is damaged (checksum mismatch); computing the features again") == 1
    assert extract(model, split, "tiny", cache=cache, show_progress=False).cached  # the entry was rewritten
    # the decoded-image cache of data/decode.py
    root = _tree(tmp_path / "d", {"train": {"cat": 40, "dog": 40}})
    first = load_split("imagefolder", "train", str(root), 16, cache_dir=str(tmp_path / "img"))
    (img_entry,) = (tmp_path / "img").glob("images-*.pt")
    _damage_middle(img_entry, fill)
    second = load_split("imagefolder", "train", str(root), 16, cache_dir=str(tmp_path / "img"))
    err = capsys.readouterr().err
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert "decoded-image cache" in err and "is damaged (checksum mismatch)" in err
    fault_case(outcome="'warning: the feature cache entry ... is damaged (checksum mismatch); computing the features "
                       "again' (and the same for the decoded images); recomputed values identical", lost="nothing")


# ----------------------------------------------------------------------------------------------
# resume


def _epoch_records(run: Path) -> dict[int, dict]:
    """The last epoch record of each epoch (a resumed run logs a redone epoch again)."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "epoch":
            out[rec["epoch"]] = rec
    return out


def test_a_resumed_epoch_records_the_means_of_the_uninterrupted_one(tmp_path, monkeypatch, fault_case):
    fault_case(injected="SIGTERM at step 3 of epoch 2 of an i-MAE run, then --resume",
               expected="the resumed epoch's record equals the uninterrupted one's (every loss term, alpha and "
                        "same-class statistics within float tolerance, the same image count); the stopped event "
                        "names epoch 2")
    sets = {"imae.distill": False, "train.save_every_steps": 0}
    ref = pretrain(tiny_config(tmp_path / "ref", preset="digits-imae", **sets))
    run = pretrain_stopped_mid_epoch(tiny_config(tmp_path / "run", preset="digits-imae", **sets), monkeypatch)
    stopped = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"stopped"' in x]
    assert [(e["epoch"], e["step_in_epoch"], e["epochs_done"]) for e in stopped] == [(2, 3, 1)]
    pretrain(tiny_config(tmp_path / "x", preset="digits-imae", **sets), resume=str(run))
    a, b = _epoch_records(ref), _epoch_records(run)
    assert a.keys() == b.keys() == {1, 2}
    for key in ("loss", "rec_sub", "rec_dom", "alpha_mean", "alpha_std", "same_class_rate", "images"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-5, abs=1e-7), key
    assert b[2]["images"] == a[2]["images"] > 0
    assert same_weights(final_weights(run), final_weights(ref))
    fault_case(outcome=f"epoch 2 loss {b[2]['loss']:.4f} resumed vs {a[2]['loss']:.4f} uninterrupted, "
                       f"{b[2]['images']:.0f} images in both; stopped event epoch 2, 3 steps done",
               lost="nothing")


def test_a_mid_epoch_resume_with_another_batch_layout_is_refused(tmp_path, monkeypatch, fault_case):
    fault_case(injected="a run stopped at step 3 of epoch 2, resumed with another train.batch_size, then with "
                        "another train.accum_iter",
               expected="refused in one line, as fine-tuning does (the rest of the epoch's batches would differ)")
    run = pretrain_stopped_mid_epoch(tiny_config(tmp_path / "run"), monkeypatch)
    assert ckpt.load(run / "checkpoint-last.pth")["step_in_epoch"] == 3
    msgs, before = [], (run / "config.yaml").read_text()
    for key, value in (("train.batch_size", 8), ("train.accum_iter", 2)):
        with pytest.raises(ConfigError) as e:
            pretrain(tiny_config(tmp_path / "x"), resume=str(run), overrides={key: value})
        msgs.append(str(e.value))
    assert msgs[0] == (f"{run} stopped in the middle of an epoch with train.batch_size=16, train.accum_iter=1 on 1 "
                       f"process(es); resume it with the same (now train.batch_size=8, train.accum_iter=1 on 1 "
                       f"process(es))")
    assert "(now train.batch_size=16, train.accum_iter=2 on 1 process(es))" in msgs[1]
    assert ckpt.load(run / "checkpoint-last.pth")["global_step"] == 9 and (run / "config.yaml").read_text() == before
    pretrain(tiny_config(tmp_path / "x"), resume=str(run))  # the same layout resumes
    fault_case(outcome="'<run> stopped in the middle of an epoch with train.batch_size=16, train.accum_iter=1 on 1 "
                       "process(es); resume it with the same (now train.batch_size=8, ...)'; the same layout "
                       "resumes", lost="nothing")


def test_text_empty_and_random_files_as_checkpoints_give_one_line(tmp_path, fault_case):
    fault_case(injected="a text file, an empty file, random bytes and a JSON file given as the checkpoint",
               expected="the same one-line error for each, exit 2, no traceback")
    files = {"text.pth": b"hello\n", "empty.pth": b"", "random.pth": os.urandom(4096), "json.pth": b'{"model": 1}'}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {tmp_path / name} "):
            ckpt.load(tmp_path / name)
    res = subprocess.run([sys.executable, "-m", "imae", "linprobe", str(tmp_path / "text.pth")], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-1500:]
    assert res.stderr.strip().splitlines() == [f"imae: error: cannot read checkpoint {tmp_path / 'text.pth'} "
                                               f"(KeyError: 101); it may be truncated or not a PyTorch file"]
    with pytest.raises(CheckpointError, match=r"\(empty file\)"):
        ckpt.load(tmp_path / "empty.pth")
    fault_case(outcome="'cannot read checkpoint ... (KeyError: 101) / (empty file) / ...; it may be truncated or not "
                       "a PyTorch file', exit 2", lost="nothing")


def test_a_failed_start_leaves_no_run_folder_and_never_touches_an_existing_one(tmp_path, monkeypatch, fault_case):
    fault_case(injected="starts that fail before training: a missing data path, an empty data folder, a corrupt "
                        "image, model.patch_size=5; into the default runs/<preset>-<timestamp> and into an existing "
                        "--output-dir",
               expected="each fails with its one-line error; no runs/ folder is left; an existing folder keeps "
                        "exactly its entries")
    from imae.config import build_config
    from imae.errors import ImaeError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    broken = _tree(tmp_path / "broken", {"train": {"cat": 3}})
    (broken / "train" / "cat" / "zero.png").write_bytes(b"")
    cases = {"missing data path": {"data.dataset": "imagefolder", "data.path": str(tmp_path / "nope")},
             "empty data folder": {"data.dataset": "imagefolder", "data.path": str(tmp_path / "empty")},
             "corrupt image": {"data.dataset": "imagefolder", "data.path": str(broken), "data.cache_dir": "none",
                               "data.img_size": 16},
             "patch size 5": {"model.patch_size": 5}}
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    for name, sets in cases.items():
        for out in (None, str(existing)):
            with pytest.raises(ImaeError):
                pretrain(build_config("digits-mae", {**TINY_SETS, **sets, "output_dir": out}))
            assert not (tmp_path / "runs").exists(), name
            assert sorted(os.listdir(existing)) == ["notes.txt"] and (existing / "notes.txt").read_text() == "mine"
    fault_case(outcome="4 failed starts x 2 folders: no runs/ left behind; the existing folder kept only its "
                       "notes.txt", lost="nothing")


def test_sixteen_bit_greyscale_pngs_are_scaled_not_white(tmp_path, fault_case):
    fault_case(injected="a 16-bit greyscale (I;16) PNG with values 0..65535 in the training folder",
               expected="decoded with its grey levels scaled to 8 bits (v / 257), not clipped to white")
    import numpy as np
    from PIL import Image

    from imae.data.decode import open_rgb

    values = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)  # uint16: mode I;16
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(open_rgb(str(path)))
    assert rgb.shape == (16, 16, 3) and (rgb[..., 0] == np.arange(256).reshape(16, 16)).all()
    assert (rgb[..., 0] == rgb[..., 2]).all()
    fault_case(outcome=f"min {rgb.min()}, max {rgb.max()}: every level v decoded as v / 257 (before: all 255)",
               lost="nothing")


def test_an_empty_cifar_folder_speaks_of_download_not_torchvision_arguments(tmp_path, fault_case):
    fault_case(injected="--data-path at an empty folder for cifar10", expected="one line naming --download, "
                                                                               "not torchvision's download=True")
    from imae.data.datasets import load_split
    from imae.errors import DataError

    with pytest.raises(DataError) as e:
        load_split("cifar10", "train", str(tmp_path))
    assert "download=True" not in str(e.value) and "pass --download to fetch it" in str(e.value)
    fault_case(outcome=f"'{str(e.value).replace(str(tmp_path), '<dir>')}'", lost="nothing")


# ----------------------------------------------------------------------------------------------
# full disks


def _full_disk_save(real):
    """torch.save that writes a little, then fails as it does on a full disk (a RuntimeError, not an OSError)."""

    def save(obj, f, *a, **k):
        if hasattr(f, "write"):  # imae.atomic hands torch.save the open temporary file
            f.write(b"PK\x03\x04 partial")
        else:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4021")

    return save


def test_a_full_cache_disk_warns_once_and_goes_on(tmp_path, monkeypatch, capsys, fault_case):
    fault_case(injected="torch.save of the decoded-image cache and of the feature cache fails as on a full disk "
                        "(RuntimeError 'unexpected pos'), twice each",
               expected="one warning line per cache, the partial file removed, the work goes on with the same "
                        "results")
    from conftest import tiny_mae
    from imae.config.evaluate import EvalDataConfig
    from imae.data import decode
    from imae.data.datasets import load_split
    from imae.eval import features as F
    from imae.eval.eval_split import load_eval_split

    monkeypatch.setattr(decode.torch, "save", _full_disk_save(torch.save))
    monkeypatch.setattr(decode, "_WARNED", set())
    for name in ("a", "b"):
        root = _tree(tmp_path / name, {"train": {"cat": 2, "dog": 2}})
        assert len(load_split("imagefolder", "train", str(root), 16, cache_dir=str(tmp_path / "img"))) == 4
    torch.manual_seed(0)
    model = tiny_mae(img_size=16)
    cache = F.FeatureCache(tmp_path / "feat")
    feats = []
    for n in (3, 4):
        split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=n), "eval", 16, progress=False)
        feats.append(F.extract(model, split, "tiny", cache=cache, show_progress=False))
        assert torch.equal(feats[-1].cls, F.extract(model, split, "tiny", cache=None, show_progress=False).cls)
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the decoded-image cache in") == 1
    assert err.count("warning: cannot write the feature cache in") == 1 and "unexpected pos" in err
    assert not [p.name for p in tmp_path.rglob("*tmp*")]
    fault_case(outcome="'warning: cannot write the decoded-image cache in ... ([enforce fail at "
                       "inline_container.cc:664] ...); going on without it' once, the same for the feature cache; "
                       "no partial files left; results equal uncached ones", lost="nothing (the cache is skipped)")


def test_a_full_disk_while_writing_a_result_keeps_the_previous_one(tmp_path, monkeypatch, fault_case):
    fault_case(injected="disk full (ENOSPC) half-way through writing an evaluation's JSON result over an earlier one",
               expected="one-line error; the earlier JSON intact; no partial file left")
    from imae.errors import ImaeError
    from imae.eval import results

    first = results.write_result(tmp_path, "knn", {"results": {"top1": 0.5}})
    before = first.read_text()

    disk_full_after_half(monkeypatch)  # every file is written by imae.atomic
    with pytest.raises(ImaeError) as e:
        results.write_result(tmp_path, "knn", {"results": {"top1": 0.9}})
    assert str(e.value) == (f"cannot write {first} (No space left on device); the previous one is intact; free space "
                            f"or choose another --output-dir")
    assert first.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["knn.json"]
    fault_case(outcome="'cannot write .../knn.json (No space left on device); the previous one is intact; ...'; "
                       "knn.json unchanged, no partial file", lost="nothing")


def test_a_record_after_a_partial_log_line_starts_its_own_line(tmp_path, fault_case):
    fault_case(injected="log.jsonl ending in half a record (a kill during a write), then a resumed run logs",
               expected="the next record starts on its own line; every other line parses")
    from imae.engine.logs import RunLog

    (tmp_path / "log.jsonl").write_text('{"kind": "step", "step": 1}\n{"kind": "step", "st')
    log = RunLog(tmp_path, tensorboard=False)
    log.write("event", {"event": "resume"})
    log.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert lines[1] == '{"kind": "step", "st' and json.loads(lines[2])["event"] == "resume" and len(lines) == 3
    fault_case(outcome="the partial line stays alone (the report skips it); the resume record parses",
               lost="the half record")


def test_config_changes_on_resume_are_printed_recorded_and_the_original_kept(tmp_path, capsys, fault_case):
    fault_case(injected="a finished run resumed with --set train.blr=0.1 and more epochs",
               expected="one line per changed key (old -> new), the changes in the resume event, the original "
                        "config.yaml kept as config.orig.yaml")
    run = pretrain(tiny_config(tmp_path / "run"))
    original = (run / "config.yaml").read_text()
    blr = ckpt.load(run / "checkpoint-last.pth")["config"]["train"]["blr"]
    from imae.errors import DataError

    with pytest.raises(DataError):  # a resume that fails to start leaves the configuration as it was
        pretrain(tiny_config(tmp_path / "x"), resume=str(run), overrides={"data.dataset": "imagefolder",
                                                                          "data.path": str(tmp_path / "nope")})
    assert (run / "config.yaml").read_text() == original and not (run / "config.orig.yaml").exists()
    capsys.readouterr()
    pretrain(tiny_config(tmp_path / "x"), resume=str(run), overrides={"train.blr": 0.1, "train.epochs": 3})
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("resume: ")]
    assert lines == ["resume: train.epochs changed: 2 -> 3", f"resume: train.blr changed: {blr!r} -> 0.1"]
    event = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"resume"' in x][-1]
    assert event["changes"] == {"train.epochs": [2, 3], "train.blr": [blr, 0.1]}
    assert (run / "config.orig.yaml").read_text() == original and "blr: 0.1" in (run / "config.yaml").read_text()
    fault_case(outcome=f"'resume: train.blr changed: {blr!r} -> 0.1' (and train.epochs); the resume event records "
                       f"both; config.orig.yaml equals the first config.yaml", lost="nothing")


def test_a_run_too_short_for_its_warmup_warns_once(tmp_path, capsys):
    pretrain(tiny_config(tmp_path / "a", **{"train.epochs": 1, "train.warmup_epochs": 100}))
    err = capsys.readouterr().err
    assert err.count("warning: train.epochs 1 <= train.warmup_epochs 100: the learning rate never leaves its "
                     "warm-up (it peaks at") == 1
    pretrain(tiny_config(tmp_path / "b"))  # 2 epochs, 1 of warm-up
    assert "warm-up" not in capsys.readouterr().err


def test_an_error_during_a_progress_bar_starts_its_own_line(tmp_path):
    res = subprocess.run(cli(tmp_path / "run", sets={"train.lr": 1e30, "train.epochs": 2}), capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 1 and "epoch 1/2:" in res.stderr  # the bar was drawn
    before = res.stderr.split("imae: error: loss became non-finite")[0]
    assert before.endswith(("\n", "\r")), repr(before[-120:])


def test_progress_shows_under_a_pty_that_reports_no_window_size(tmp_path):
    import pty
    import select

    master, slave = pty.openpty()  # a new pty reports 0 columns and 0 rows, as under `script`
    assert os.get_terminal_size(slave).columns == 0
    p = subprocess.Popen(cli(tmp_path / "run", sets={"train.epochs": 1}), stdin=slave, stdout=slave, stderr=slave,
                         env=ENV, close_fds=True)
    os.close(slave)
    out, deadline = b"", time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 5)
        if not ready:
            if p.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0, out[-1500:]
    assert b"epoch 1/1:" in out and b"6/6 [" in out, out[-1500:]


def test_each_evaluation_help_lists_only_what_it_uses_with_a_working_example():
    import contextlib
    import io
    import re

    from imae.cli import build_parser
    from imae.config import resolve
    from imae.config.evaluate import EvalConfig
    from imae.config.finetune import FinetuneConfig

    parser = build_parser()
    for name, has_epochs in {"separability": False, "semantics": False, "linprobe": True, "knn": False,
                             "finetune": True, "figures": False}.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = " ".join(buf.getvalue().split())
        assert ("--epochs" in text) == has_epochs, name
        assert "train.blr" not in text and "number of epochs" not in text, name
        example = re.search(r"e\.g\. --set (\S+) \(repeatable\)", text).group(1)
        assert f"example: imae {name} runs/c10-imae " in text and f"--set {example}" in text.split("example:")[1]
        resolve({}, {}, [example], FinetuneConfig if name == "finetune" else EvalConfig)  # the example is valid


def test_top_level_and_every_command_help_print_without_error():
    import contextlib
    import io

    from imae.cli import COMMANDS, build_parser

    parser = build_parser()
    for argv in [["--help"], *([name, "--help"] for name in COMMANDS)]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 0, argv
        assert "usage: imae" in buf.getvalue(), argv
        if argv == ["--help"]:  # a help text with a literal % is shown as written
            assert "95% intervals" in " ".join(buf.getvalue().split())


def test_the_python_block_of_the_method_page_runs_as_written():
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "method.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "docs/method.md", "exec"), namespace)  # noqa: S102  (the page's own code)
    assert set(namespace["out"]) >= {"loss", "rec_sub", "rec_dom", "mixture"} and namespace["feats"].ndim == 3


def _two_ranks(cmd: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_rank_env(r, port))
            for r in (0, 1)]


def test_resubmitting_a_two_process_run_after_a_worker_is_killed_ends_bit_identical(tmp_path, fault_case):
    fault_case(injected="SIGKILL of rank 1 of a 2-process gloo run (no agent, no torch restart), then the same "
                        "command submitted again",
               expected="rank 0 stops with one line; the resubmitted job resumes from the last checkpoint and ends "
                        "with the weights of an uninterrupted 2-process run")
    ref, run, sets = tmp_path / "ref", tmp_path / "run", {"train.epochs": 3}  # 3 steps an epoch on 2 ranks
    for p in _two_ranks(cli(ref, "--resume", "auto", sets=sets)):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-1500:]
    procs = _two_ranks(cli(run, "--resume", "auto", sets=sets))
    deadline = time.time() + 120
    while last_step(run) < 4 and procs[0].poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert procs[0].poll() is None, procs[0].communicate()[1][-1500:]
    procs[1].kill()
    killed_at = last_step(run)
    _, err = procs[0].communicate(timeout=120)
    procs[1].communicate()
    assert procs[0].returncode == 1 and "lost contact with another training process" in err, err[-1500:]
    resumed_from = latest_complete(run)[1]["global_step"]
    for p in _two_ranks(cli(run, "--resume", "auto", sets=sets)):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-1500:]
    assert same_weights(final_weights(run), final_weights(ref))
    fault_case(outcome=f"rank 1 killed after step {killed_at}; rank 0 stopped with 'lost contact ...'; the same "
                       f"command resumed from step {resumed_from} and ended with identical weights",
               lost="the steps since the last checkpoint, redone identically")


def test_max_steps_makes_a_smoke_run_honoured_by_schedule_checkpoint_and_resume(tmp_path, monkeypatch):
    import imae.engine.loop as loop
    from imae.runtime.optim import lr_at

    sets = {"train.max_steps": 8, "train.save_every_steps": 0}  # of 2 epochs x 6 steps
    a = pretrain(tiny_config(tmp_path / "a", **sets))
    ck = ckpt.load(a / "checkpoint-last.pth")
    assert (ck["global_step"], ck["epoch"], ck["step_in_epoch"]) == (8, 0, 2)
    records = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "step"]
    base = records[0]["lr"]
    span = 8 / 6  # the schedule (1 epoch of warm-up in 2) compressed into 8 steps
    assert lrs == pytest.approx([lr_at(s / 6, base, 0.0, span / 2, span) for s in range(8)], rel=1e-6)
    assert any(r.get("event") == "max_steps" for r in records)
    real, calls = loop.lr_at, {"n": 0}

    def stop_at_five(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(loop, "lr_at", stop_at_five)
    b = pretrain(tiny_config(tmp_path / "b", **sets))
    monkeypatch.setattr(loop, "lr_at", real)
    assert ckpt.load(b / "checkpoint-last.pth")["global_step"] == 5
    pretrain(tiny_config(tmp_path / "x"), resume=str(b))
    assert ckpt.load(b / "checkpoint-last.pth")["global_step"] == 8
    assert same_weights(final_weights(b), final_weights(a))
    pretrain(tiny_config(tmp_path / "x"), resume=str(a))  # already at max_steps: nothing more
    assert ckpt.load(a / "checkpoint-last.pth")["global_step"] == 8


def test_nonfinite_gradients_stop_a_finetune_before_the_update(tmp_path, monkeypatch, fault_case):
    fault_case(injected="a fine-tune whose loss is finite but whose gradients are infinite at epoch 2 step 5",
               expected="stops naming the step before the update; the checkpoints keep finite weights")
    import imae.finetune.objective as ft
    from imae.finetune import finetune

    src = pretrain(tiny_config(tmp_path / "src", **{"train.epochs": 1}))
    real, calls = ft.mixup_and_loss, {"n": 0}

    def mixup_and_loss(t, num_classes):
        mix, criterion = real(t, num_classes)

        def crit(logits, y):
            calls["n"] += 1
            loss = criterion(logits, y)
            return _InfGrad.apply(loss) if calls["n"] == 11 else loss

        return mix, crit

    monkeypatch.setattr(ft, "mixup_and_loss", mixup_and_loss)
    out = tmp_path / "ft"
    with pytest.raises(TrainingError, match=r"gradient norm became non-finite at epoch 2 step 5 \(grad_norm=(inf|nan); "
                                            r"loss=.*\); the update was not applied; last good checkpoint: "):
        finetune(src, overrides={"output_dir": str(out), "device": "cpu", "finetune.epochs": 2},
                 sets=["finetune.batch_size=16", "data.num_workers=0", "data.train_per_class=10",
                       "data.eval_per_class=2", "finetune.save_every=1"])
    ck = ckpt.load(out / "checkpoint-last.pth")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values())
    fault_case(outcome="'gradient norm became non-finite at epoch 2 step 5 (grad_norm=inf; loss=...); the update "
                       "was not applied; last good checkpoint: ...'; checkpoint of epoch 1 finite",
               lost="the steps of epoch 2")


def test_finetune_max_steps_smoke_run_is_evaluated_and_resumes_exactly(tmp_path, monkeypatch):
    import imae.engine.loop as ft
    from imae.finetune import finetune

    src = pretrain(tiny_config(tmp_path / "src", **{"train.epochs": 1}))
    sets = ["finetune.batch_size=16", "data.num_workers=0", "data.train_per_class=10", "data.eval_per_class=2",
            "finetune.max_steps=8", "finetune.log_every=1", "finetune.warmup_epochs=1"]

    def run(out, resume=None):
        return finetune(src, overrides={"output_dir": str(out), "device": "cpu", "finetune.epochs": 2}, sets=sets,
                        resume=resume)

    a = run(tmp_path / "a")  # 2 epochs x 6 steps, stopped after 8
    ck = ckpt.load(a / "checkpoint-last.pth")
    assert (ck["global_step"], ck["epoch"], ck["step_in_epoch"]) == (8, 0, 2)
    last = json.loads((a / "finetune.json").read_text())["results"]["history"][-1]
    assert last["partial"] and last["steps"] == 2 and "test_top1" in last
    real, calls = ft.lr_at, {"n": 0}

    def stop_at_five(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(ft, "lr_at", stop_at_five)
    b = run(tmp_path / "b")
    monkeypatch.setattr(ft, "lr_at", real)
    assert ckpt.load(b / "checkpoint-last.pth")["global_step"] == 5
    stopped = [json.loads(x) for x in (b / "log.jsonl").read_text().splitlines() if '"stopped"' in x]
    assert [(e["epoch"], e["step_in_epoch"], e["epochs_done"]) for e in stopped] == [(1, 5, 0)]
    run(tmp_path / "b", resume=str(b))
    assert ckpt.load(b / "checkpoint-last.pth")["global_step"] == 8
    assert same_weights(final_weights(b), final_weights(a))
    steps = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines() if '"kind": "step"' in x]
    assert len(steps) == 8 and steps[-1]["lr"] < steps[5]["lr"]  # the compressed cosine is decaying at the end
