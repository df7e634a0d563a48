"""DistributedDataParallel over gloo on two CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY, tiny_cli_sets

STEPS, GLOBAL_BATCH = 3, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, images, noise, ddp: bool):
    from imae.runtime.optim import build_adamw

    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = build_adamw(model, 1e-3, 0.05, (0.9, 0.95), torch.device("cpu"))
    for s in range(STEPS):
        loss = net(images[s], mask_ratio=0.75, noise=noise[s])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 3, 32, 32, generator=g, dtype=torch.float64)
    return x, torch.rand(STEPS, GLOBAL_BATCH, 64, generator=g)


def _model():
    """float64: Adam divides by the gradient's magnitude, which would blow fp32 summation-order noise up
    to ~1e-5 on near-zero gradients; in fp64 any real difference in the averaged gradient still shows."""
    from imae.models import create_model

    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch4", **TINY).double()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = _model()
    images, noise = _inputs()
    half = GLOBAL_BATCH // world
    sl = slice(rank * half, (rank + 1) * half)
    state = _train(model, images[:, sl], noise[:, sl], ddp=True)
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def test_two_gloo_processes_on_half_batches_match_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "ddp.pth")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn", join=True)
    single = _train(_model(), *_inputs(), ddp=False)
    ddp = torch.load(out)
    worst = max((single[k] - ddp[k]).abs().max().item() for k in single)
    assert not torch.equal(single["blocks.0.attn.qkv.weight"], _model().state_dict()["blocks.0.attn.qkv.weight"])
    assert worst < 1e-9  # the issue asks 1e-5; fp64 shows the averaged gradient is the full-batch one


@pytest.mark.slow
def test_torchrun_two_processes_completes_and_only_rank0_writes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "imae", "pretrain", "--preset", "digits-mae", "--output-dir", str(out), "--device", "cpu",
           *tiny_cli_sets(**{"train.batch_size": 8})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "event" and r.get("event") == "start" for r in records) == 1
    start = next(r for r in records if r["kind"] == "event")
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 6  # 100 images / (8 x 2)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert (out / "checkpoint-last.pth").is_file() and not list(out.glob(".*tmp*"))
    # the run directory is printed once (by rank 0), never once per rank or interleaved
    assert res.stdout.strip().splitlines()[-1] == str(out) and res.stdout.count(str(out)) == 1
