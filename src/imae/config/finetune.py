"""Typed configuration of fine-tuning (``imae finetune``): ``FinetuneConfig``, its loop in ``finetune:``.

Resolved as the evaluation commands' (``imae.config.evaluate``): defaults -> the evaluated run's data set
-> ``--preset`` (``configs/finetune/``, or a pre-training preset's data section) -> flags -> ``--set``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imae.config.evaluate import POOLS, EvalDataConfig, check_device_and_data
from imae.config.loop import LoopConfig, validate_loop
from imae.config.tree import Settings, at_least, check_scale, fraction, short
from imae.errors import ConfigError


@dataclass
class FinetuneParams(LoopConfig):
    """End-to-end fine-tuning, MAE's recipe (METHOD.md section 6 gives the i-MAE ViT-B values).

    The loop's fields (``LoopConfig``) with the defaults that differ from pre-training's, then fine-tuning's own.
    A ``max_steps`` smoke run is evaluated at its last step.
    """

    warmup_epochs: float = 5.0
    blr: float = 5e-4  # lr = blr * effective batch / 256
    min_lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    save_every: int = 10
    layer_decay: float = 0.75  # lr scale of layer i: layer_decay ** (depth + 1 - i)
    drop_path: float = 0.1
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy; None: off
    reprob: float = 0.25  # random erasing probability
    crop_scale: tuple[float, float] = (0.08, 1.0)
    pool: str = "cls"  # cls token (the i-MAE release) or mean of the patch tokens (timm 'avg' + fc_norm)
    eval_every: int = 1  # epochs between evaluations on the evaluation split


@dataclass
class FinetuneConfig(Settings):
    preset: str | None = None
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None  # None: <run dir>/eval/finetune
    num_heads: int | None = None
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)

    def validate(self) -> FinetuneConfig:
        check_device_and_data(self)
        t = self.finetune
        validate_loop("finetune", t)
        if not 0.0 < t.layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must lie in (0, 1], got {short(t.layer_decay)}")
        if t.pool not in POOLS:
            raise ConfigError(f"finetune.pool must be one of {', '.join(POOLS)}, got {short(t.pool)}")
        fraction("finetune", t, ("drop_path", "label_smoothing"))
        fraction("finetune", t, ("reprob",), top=True)
        at_least("finetune", t, ("mixup", "cutmix"), 0)
        at_least("finetune", t, ("eval_every",), 1)
        check_scale("finetune.crop_scale", t.crop_scale)
        if (t.mixup > 0 or t.cutmix > 0) and t.batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even finetune.batch_size, got {t.batch_size}")
        return self
