"""Pre-training's configuration (``imae pretrain``): the data, the model, the loop (``train:``) and the
i-MAE options; written to every run directory as ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from imae.config.loop import LoopConfig, validate_loop
from imae.config.tree import (
    Settings,
    at_least,
    check_device,
    check_mask_ratio,
    check_scale,
    check_seed,
    positive,
    preset_label,
    preset_tree,
    resolve,
    short,
)
from imae.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | cifar10 | cifar100 | imagefolder | tiny-imagenet
    path: str | None = None  # root folder (not needed for digits)
    download: bool = False  # let torchvision download cifar10/cifar100 into `path`
    img_size: int | None = None  # None: the model's image size
    in_memory: bool | None = None  # decode once into a uint8 tensor; None: yes for small data sets
    cache_dir: str | None = None  # decoded-image cache; None: $IMAE_CACHE_DIR or ~/.cache/imae; "none": off
    num_workers: int = 4  # loader processes for the file-based (ImageNet-scale) path
    max_per_class: int | None = None  # keep only the first N training images of each class
    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop, as in MAE
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    skip_corrupt: bool = False  # skip unreadable images (counted and reported) instead of stopping


@dataclass
class ModelConfig:
    name: str = "mae_vit_tiny_patch4"  # a factory of imae.models.registry; fields below override it
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float | None = None
    norm_pix_loss: bool = False  # per-patch normalised pixel targets
    layer_norm_eps: float | None = None  # None: 1e-6 (the official MAE's)

    COUNTS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
              "decoder_num_heads")

    def overrides(self) -> dict[str, Any]:
        """The architecture fields that are set, as keyword arguments for ``create_model``."""
        skip = {"name"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


@dataclass
class TrainConfig(LoopConfig):
    """The training loop (``LoopConfig``, pre-training's defaults) and what only pre-training has."""

    lr: float | None = None  # absolute learning rate; overrides blr when set
    mask_ratio: float = 0.75
    monitor_every: int = 0  # every N epochs: frozen kNN / NMI (/ i-MAE gain) on fixed subsets (imae.engine.monitor)


@dataclass
class IMAEConfig:
    """i-MAE options (METHOD.md sections 2-3); used when ``method: imae``."""

    teacher: str | None = None  # frozen MAE teacher: a run directory or checkpoint (ours or official)
    alpha_mode: str = "beta"  # fixed | uniform | beta (folded to min(l, 1 - l))
    alpha: float = 0.3  # the fixed alpha
    alpha_uniform: tuple[float, float] = (0.0, 0.5)
    alpha_beta: tuple[float, float] = (1.0, 1.0)  # Beta(1, 1) folded: alpha ~ U(0, 0.5)
    alpha_per: str = "sample"  # sample | batch (one alpha per batch, as the 2024 release)
    branches: str = "two"  # two | sub (the 2022 demo: subordinate branch only)
    distill: bool = True
    w_rec_sub: float = 1.0
    w_rec_dom: float = 1.0
    w_distill_sub: float = 1.0
    w_distill_dom: float = 1.0
    same_class_p: float | str = "random"  # P(partner has the same class): a number in [0, 1], random, self


@dataclass
class Config(Settings):
    method: str = "mae"  # mae | imae
    preset: str | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    output_dir: str | None = None
    init_from: str | None = None  # start from these weights (a checkpoint file or run directory)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    imae: IMAEConfig = field(default_factory=IMAEConfig)

    def validate(self) -> Config:
        """Check value ranges that the type system cannot; raise ``ConfigError`` with the fix."""
        t = self.train
        if self.method not in ("mae", "imae"):
            raise ConfigError(f"method must be 'mae' or 'imae', got {short(self.method)}")
        check_seed("seed", self.seed)
        if not 0.0 <= t.mask_ratio < 1.0:
            raise ConfigError(f"train.mask_ratio must be in [0, 1), got {short(t.mask_ratio)}")
        validate_loop("train", t)
        at_least("train", t, ("monitor_every",), 0)
        d = self.data
        at_least("data", d, ("img_size",), 1, unset="null: the model's")
        at_least("data", d, ("max_per_class",), 1, unset="null: all")
        at_least("data", d, ("num_workers",), 0)
        check_scale("data.crop_scale", d.crop_scale)
        if not 0 < d.crop_ratio[0] <= d.crop_ratio[1]:
            raise ConfigError(f"data.crop_ratio must satisfy 0 < lo <= hi, got {short(list(d.crop_ratio))}")
        at_least("model", self.model, ModelConfig.COUNTS, 1, unset="null: the named model's")
        positive("model", self.model, ("mlp_ratio", "layer_norm_eps"), unset="null: the named model's")
        from imae.models.registry import resolve_arch

        over = self.model.overrides()
        if d.img_size is not None:  # as imae.engine.objectives.common.model_overrides
            over.setdefault("img_size", d.img_size)
        _, arch = resolve_arch(self.model.name, **over)  # unknown names, indivisible sizes: ConfigError
        check_mask_ratio("train.mask_ratio", t.mask_ratio, arch.num_patches, arch.img_size, arch.patch_size)
        if self.method == "imae":
            from imae.data.mixing import AlphaSampler
            from imae.data.pairing import parse_p

            i = self.imae
            AlphaSampler(i.alpha_mode, i.alpha, i.alpha_uniform, i.alpha_beta, i.alpha_per)  # raises ConfigError
            self.imae.same_class_p = parse_p(i.same_class_p)
            if i.branches not in ("two", "sub"):
                raise ConfigError(f"imae.branches must be 'two' or 'sub', got {short(i.branches)}")
            at_least("imae", i, ("w_rec_sub", "w_rec_dom", "w_distill_sub", "w_distill_dom"), 0)
        check_device(self.device)
        return self


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None, cls: type = Config) -> Config:
    """Resolve a configuration: defaults <- preset <- flat ``overrides`` (dotted keys) <- ``--set`` items."""
    tree: dict[str, Any] = {}
    if preset is not None:
        tree = preset_tree(preset, cls)
        tree.setdefault("preset", preset_label(preset))
    return resolve(tree, overrides, sets, cls)
