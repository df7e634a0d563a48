"""Fine-tuning: the timm ViT is our encoder, layer decay scales as specified, a short run learns, DDP runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, TINY, tiny_mae
from eval_fixtures import digits_runs
from imae.finetune.vit import layer_decay_groups, vit_from_encoder


def test_timm_vit_from_our_encoder_gives_our_cls_features():
    torch.manual_seed(0)
    model = tiny_mae().eval()
    vit = vit_from_encoder(model, num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(x)[:, 0]
        pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)  # what the head sees
    assert torch.allclose(pooled, ours, atol=1e-5)
    assert vit.head.weight.shape == (10, TINY["embed_dim"]) and float(vit.head.weight.detach().abs().max()) < 1e-3


def test_mean_pooling_starts_fc_norm_from_the_encoders_final_norm():
    torch.manual_seed(0)
    model = tiny_mae()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    vit = vit_from_encoder(model, 10, pool="mean")
    assert vit.global_pool == "avg" and torch.equal(vit.fc_norm.weight, model.norm.weight)
    assert isinstance(vit.norm, torch.nn.Identity)


def test_layer_decay_scales_and_weight_decay_groups():
    vit = vit_from_encoder(tiny_mae(), 10)  # depth 2: layers 0 (embeddings), 1, 2 (blocks), 3 (norm, head)
    groups = layer_decay_groups(vit, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in vit.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    expected = {"patch_embed.proj.weight": 0.125, "cls_token": 0.125, "pos_embed": 0.125,
                "blocks.0.attn.qkv.weight": 0.25, "blocks.0.norm1.bias": 0.25, "blocks.1.mlp.fc2.weight": 0.5,
                "norm.weight": 1.0, "head.weight": 1.0, "head.bias": 1.0}
    for name, s in expected.items():
        assert scale[name] == pytest.approx(s), name
    assert set(scale) == {n for n, p in vit.named_parameters() if p.requires_grad}
    assert decay["blocks.0.attn.qkv.weight"] == 0.05 and decay["head.weight"] == 0.05
    assert decay["cls_token"] == decay["pos_embed"] == decay["blocks.0.norm1.bias"] == decay["head.bias"] == 0.0
    from imae.runtime.optim import set_lr

    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 0.01)
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [0.00125, 0.0025, 0.005, 0.01]


def test_every_finetune_preset_resolves():
    from imae.config.finetune import FinetuneConfig
    from imae.eval.run import resolve_config

    presets = sorted((REPO / "configs" / "finetune").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cifar10-tiny", "cifar100-tiny", "tinyimagenet-small", "imagenet-base"}
    for p in presets:
        cfg = resolve_config(FinetuneConfig, SimpleNamespace(train_config=None), f"finetune/{p.stem}")
        assert cfg.data.dataset and cfg.finetune.epochs >= 1
    ib = resolve_config(FinetuneConfig, SimpleNamespace(train_config=None), "finetune/imagenet-base").finetune
    assert (ib.epochs, ib.blr, ib.layer_decay, ib.pool) == (20, 5e-5, 0.65, "cls")
    assert ib.warmup_epochs == 2 and ib.batch_size * ib.accum_iter * 8 == 1024  # on the 8 GPUs its comment names


def test_short_finetune_on_real_cifar10_lowers_the_loss(cifar10_dir, tmp_path):
    from imae.finetune import finetune

    torch.manual_seed(0)
    ck = tmp_path / "tiny.pth"
    torch.save({"model": tiny_mae().state_dict()}, ck)  # official layout
    sets = ["data.train_per_class=16", "data.eval_per_class=4", "data.num_workers=0", "finetune.batch_size=32",
            "finetune.mixup=0", "finetune.cutmix=0", "finetune.auto_augment=null", "finetune.reprob=0",
            "finetune.drop_path=0", "finetune.blr=0.01", "finetune.warmup_epochs=1", "finetune.layer_decay=0.9",
            "finetune.crop_scale=[0.8,1.0]", "num_heads=2"]
    run = finetune(ck, overrides={"data.dataset": "cifar10", "data.path": str(cifar10_dir), "device": "cpu",
                                  "output_dir": str(tmp_path / "ft"), "finetune.epochs": 6}, sets=sets)
    res = json.loads((run / "finetune.json").read_text())["results"]
    hist = res["history"]
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.1
    # the headline is the last epoch's test top-1; no maximum over test-scored epochs is reported
    assert res["top1"] == res["final_top1"] == hist[-1]["test_top1"] and res["epoch"] == 6
    assert "best_top1" not in res
    assert {"config.yaml", "log.jsonl", "tb", "checkpoint-last.pth", "finetune.json"} <= {p.name for p in run.iterdir()}
    saved = torch.load(run / "checkpoint-last.pth", weights_only=True)
    assert saved["epoch"] == 5 and "head.weight" in saved["model"]


@pytest.mark.slow
def test_finetune_under_torchrun_with_two_processes(tmp_path_factory, tmp_path):
    runs = digits_runs(tmp_path_factory)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    from test_distributed import _free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "imae",
           "finetune", str(runs["mae"]), "--output-dir", str(tmp_path / "ft"), "--epochs", "1", "--device", "cpu",
           "--set", "finetune.batch_size=16", "--set", "data.num_workers=0", "--set", "data.train_per_class=8",
           "--set", "data.eval_per_class=5"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads((Path(tmp_path) / "ft" / "finetune.json").read_text())
    assert rec["results"]["test_images"] == 50 and rec["results"]["history"][0]["test_top1"] is not None
    assert res.stdout.strip().splitlines() == [str(tmp_path / "ft")]  # printed once, by rank 0
