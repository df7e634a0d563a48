"""The training loop's settings, shared by pre-training's ``train:`` and fine-tuning's ``finetune:``.

One training loop (``imae.engine.loop``) reads exactly these fields from either section. The defaults are
pre-training's; ``imae.config.finetune.FinetuneParams`` redeclares the ones fine-tuning sets differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imae.config.tree import at_least, check_max_steps, positive, short
from imae.errors import ConfigError

CHECKPOINT_FORMATS = ("pth", "safetensors")


@dataclass
class LoopConfig:
    epochs: int = 100
    warmup_epochs: float = 10.0
    batch_size: int = 128  # per process
    accum_iter: int = 1  # micro-batches per optimiser step
    blr: float = 1.5e-4  # base learning rate: lr = blr * effective_batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None  # max global gradient norm
    save_every: int = 20  # keep checkpoint-<epoch>.pth every N epochs (and at the last)
    save_every_steps: int = 0  # also refresh checkpoint-last.pth every N optimiser steps (0: epoch ends only)
    keep_last: int = 0  # keep only the newest K checkpoint-<epoch>.pth files (0: keep all)
    log_every: int = 20  # optimiser steps between JSON-lines / TensorBoard step records
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with bf16 units (imae.runtime.precision); false: fp32
    compile: bool = False  # torch.compile the model
    skip_nonfinite: int = 0  # tolerate up to N non-finite losses by skipping their updates
    checkpoint_format: str = "pth"  # pth | safetensors (weights as .safetensors beside a .pth of the resume state)
    max_steps: int | None = None  # a smoke run: stop after N optimiser steps; the lr schedule is compressed to them


def validate_loop(section: str, params: Any) -> None:
    """The checks every loop section shares; messages name the section (``train.epochs must be ...``)."""
    at_least(section, params, ("epochs", "batch_size", "accum_iter", "log_every", "save_every"), 1)
    if params.checkpoint_format not in CHECKPOINT_FORMATS:
        raise ConfigError(f"{section}.checkpoint_format must be 'pth' or 'safetensors', "
                          f"got {short(params.checkpoint_format)}")
    check_max_steps(section, params.max_steps)
    at_least(section, params, ("warmup_epochs", "skip_nonfinite", "save_every_steps", "keep_last", "min_lr",
                               "weight_decay"), 0)
    positive(section, params, ("blr",))
    if hasattr(params, "lr"):  # pre-training's absolute learning rate
        positive(section, params, ("lr",), unset="null: from blr")
    # a negative norm turns every clipped step into a step up the loss: gradient ascent
    if params.clip_grad is not None and not params.clip_grad >= 0:
        raise ConfigError(f"{section}.clip_grad must be a positive maximum gradient norm (or 0 or null: no clipping), "
                          f"got {short(params.clip_grad)}; a negative one would turn training into gradient ascent")
    b1, b2 = params.betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ConfigError(f"{section}.betas must both lie in [0, 1), got {short(list(params.betas))}")
