"""Shared material of the evaluation tests: seconds-long digits runs (an MAE and an i-MAE taught by it),
an official-layout checkpoint, and planted feature sets. Test modules wrap these in fixtures."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_config

ONE_EPOCH = {"train.epochs": 1, "train.warmup_epochs": 0}
# evaluation kept small and quick: 20 training / 12 test digits per class, two alphas
FAST = {"data.train_per_class": 20, "data.eval_per_class": 12, "separability.alphas": [0.1, 0.3]}

_RUNS: dict[str, Path] = {}


def digits_runs(tmp_path_factory) -> dict[str, Path]:
    """{"mae": run dir, "imae": run dir, "referee": run dir}: trained once per test session (a few seconds). The
    referee is the MAE's recipe with another seed: what neither run was trained towards nor started from."""
    if not _RUNS:
        from imae.engine.train import pretrain

        root = tmp_path_factory.mktemp("eval-runs")
        mae = pretrain(tiny_config(root / "mae", **ONE_EPOCH))
        imae = pretrain(tiny_config(root / "imae", preset="digits-imae",
                                    **{"imae.teacher": str(mae), "init_from": str(mae), **ONE_EPOCH}))
        referee = pretrain(tiny_config(root / "referee", seed=1, **ONE_EPOCH))
        _RUNS.update(mae=mae, imae=imae, referee=referee)
    return dict(_RUNS)


def official_checkpoint(run_dir: Path, out: Path) -> Path:
    """The run's weights alone, as an official MAE release stores them: ``{"model": state_dict}``."""
    from imae import checkpoints as ckpt

    sd = ckpt.load(run_dir)["model"]
    torch.save({"model": sd}, out)
    return out


def fast_sets(**over) -> list[str]:
    """``--set`` arguments for a quick evaluation."""
    out = []
    for k, v in {**FAST, **over}.items():
        out += ["--set", f"{k}={v}"]
    return out


def planted_features(n: int = 600, dim: int = 16, classes: int = 4, seed: int = 0,
                     spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable clusters: x [n, dim] around one random unit centre per class, labels [n]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1) * 3
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x, y
