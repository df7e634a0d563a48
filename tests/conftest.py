"""Shared fixtures: the real CIFAR-10 JPEG tree, tiny models, an isolated cache folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = Path(os.environ.get("IMAE_CIFAR10_DIR", REPO.parent / "shared" / "data" / "cifar10"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# width 64, 2 encoder blocks, 1 decoder block: fast on a CPU, still a real MAE
TINY = dict(embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip on a machine without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["IMAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("imae-cache"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / "train").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10_DIR}; set IMAE_CIFAR10_DIR")
    return CIFAR10_DIR


def load_cifar_images(root: Path, per_class: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of each class: uint8 [N, 3, 32, 32], labels [N]."""
    xs, ys = [], []
    for label, c in enumerate(CLASSES):
        for f in sorted((root / split / c).iterdir())[:per_class]:
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys)


@pytest.fixture(scope="session")
def cifar_batch(cifar10_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """40 real CIFAR-10 training images (4 per class), normalised float [40, 3, 32, 32], and their labels."""
    x, y = load_cifar_images(cifar10_dir, per_class=4)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std, y


def tiny_mae(**over):
    from imae.models import create_model

    return create_model("mae_vit_tiny_patch4", **{**TINY, **over})


# a digits MAE small enough that an epoch takes a fraction of a second
TINY_SETS = {
    "model.embed_dim": 32, "model.depth": 1, "model.num_heads": 2, "model.decoder_embed_dim": 32,
    "model.decoder_depth": 1, "model.decoder_num_heads": 2, "data.max_per_class": 10,
    "train.batch_size": 16, "train.epochs": 2, "train.warmup_epochs": 1, "train.log_every": 1,
    "device": "cpu",
}


def tiny_config(out_dir, preset: str = "digits-mae", **over):
    """A resolved configuration of a seconds-long digits run writing to ``out_dir``."""
    from imae.config import build_config

    return build_config(preset, {**TINY_SETS, "output_dir": str(out_dir), **over})


def tiny_cli_sets(**over) -> list[str]:
    """``--set`` arguments for the same tiny run on the command line."""
    out = []
    for k, v in {**TINY_SETS, **over}.items():
        out += ["--set", f"{k}={v}"]
    return out


@pytest.fixture
def fault_case(request):
    """Collects what a fault test injected and what survived; appended to $IMAE_FAULT_REPORT (JSON lines), which
    ``scripts/reliability_report.py`` turns into docs/reliability.md."""
    record = {"test": request.node.name}
    yield record.update
    path = os.environ.get("IMAE_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pretrain_stopped_mid_epoch(cfg, monkeypatch, at_step: int = 9):
    """Pre-train ``cfg`` with a SIGTERM at optimiser step ``at_step`` (the 9th of 6-step epochs: epoch 2, step 3),
    as a pre-empted job is stopped; returns the run folder, whose last checkpoint is mid-epoch."""
    import signal

    import imae.engine.loop as loop
    from imae.engine.train import pretrain

    real, calls = loop.lr_at, {"n": 0}

    def lr_at(*args):
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(loop, "lr_at", lr_at)
    try:
        return pretrain(cfg)
    finally:
        monkeypatch.setattr(loop, "lr_at", real)


def disk_full_after_half(monkeypatch) -> None:
    """Every file imae writes (all go through imae.atomic) gets half its bytes, then fails as a full disk does."""
    import builtins
    import errno

    from imae import atomic

    def full_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        if "w" in mode:
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

            f.write = write
        return f

    monkeypatch.setattr(atomic, "open", full_open, raising=False)
