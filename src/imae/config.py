"""Typed configuration: dataclasses with meaningful defaults, YAML presets, ``--set key=value`` overrides.

A configuration is resolved in this order: dataclass defaults -> preset file (``configs/<name>.yaml``,
which may name a ``base`` preset it extends) -> the common command-line flags -> ``--set`` overrides.
The resolved configuration is written to every run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from imae.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


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

    def overrides(self) -> dict[str, Any]:
        """The architecture fields that are set, as keyword arguments for ``create_model``."""
        skip = {"name"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


@dataclass
class TrainConfig:
    epochs: int = 100
    warmup_epochs: float = 10.0
    batch_size: int = 128  # per process
    accum_iter: int = 1  # micro-batches per optimiser step
    blr: float = 1.5e-4  # base learning rate: lr = blr * effective_batch / 256
    lr: float | None = None  # absolute learning rate; overrides blr when set
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None  # max global gradient norm
    mask_ratio: float = 0.75
    save_every: int = 20  # keep checkpoint-<epoch>.pth every N epochs (and at the last)
    save_every_steps: int = 0  # also refresh checkpoint-last.pth every N optimiser steps (0: epoch ends only)
    keep_last: int = 0  # keep only the newest K checkpoint-<epoch>.pth files (0: keep all)
    log_every: int = 20  # optimiser steps between JSON-lines / TensorBoard step records
    amp: bool = True  # bf16 autocast on CUDA (CPU always runs fp32)
    compile: bool = False  # torch.compile the model
    skip_nonfinite: int = 0  # tolerate up to N non-finite losses by skipping their updates
    checkpoint_format: str = "pth"  # pth | safetensors (weights as .safetensors beside a .pth of the resume state)
    max_steps: int | None = None  # a smoke run: stop after N optimiser steps; the lr schedule is compressed to them


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
class Config:
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

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    def validate(self) -> Config:
        """Check value ranges that the type system cannot; raise ``ConfigError`` with the fix."""
        t = self.train
        if self.method not in ("mae", "imae"):
            raise ConfigError(f"method must be 'mae' or 'imae', got {self.method!r}")
        if not 0.0 <= t.mask_ratio < 1.0:
            raise ConfigError(f"train.mask_ratio must be in [0, 1), got {t.mask_ratio}")
        for name in ("epochs", "batch_size", "accum_iter"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(t, name)}")
        if t.checkpoint_format not in ("pth", "safetensors"):
            raise ConfigError(f"train.checkpoint_format must be 'pth' or 'safetensors', got {t.checkpoint_format!r}")
        if t.max_steps is not None and t.max_steps < 1:
            raise ConfigError(f"train.max_steps must be at least 1 (or null: no limit), got {t.max_steps}")
        if t.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs must be at least 0, got {t.warmup_epochs}")
        lo, hi = self.data.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.data.crop_scale}")
        if self.method == "imae":
            from imae.data.mixing import AlphaSampler
            from imae.data.pairing import parse_p

            i = self.imae
            AlphaSampler(i.alpha_mode, i.alpha, i.alpha_uniform, i.alpha_beta, i.alpha_per)  # raises ConfigError
            self.imae.same_class_p = parse_p(i.same_class_p)
            if i.branches not in ("two", "sub"):
                raise ConfigError(f"imae.branches must be 'two' or 'sub', got {i.branches!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        return self


# ----------------------------------------------------------------------------------------------
# presets and overrides


def preset_path(name: str) -> Path:
    """The YAML file of a preset: a name in ``configs/`` or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if p.is_file():
        return p
    raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())} "
                      f"(or pass a path to a .yaml file)")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested dict of a preset, with its ``base`` presets merged underneath."""
    if name in _seen:
        raise ConfigError(f"preset {name!r} extends itself through {' -> '.join(_seen)}")
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(load_preset(base, _seen + (name,)), data)


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None, cls: type = Config) -> Config:
    """Resolve a configuration: defaults <- preset <- flat ``overrides`` (dotted keys) <- ``--set`` items."""
    tree: dict[str, Any] = {}
    if preset is not None:
        tree = load_preset(preset)
        tree.setdefault("preset", preset_label(preset))
    return resolve(tree, overrides, sets, cls)


def resolve(tree: dict[str, Any], overrides: dict[str, Any] | None, sets: list[str] | None, cls: type) -> Any:
    """Apply flat ``overrides`` (dotted keys), then ``--set`` items, to ``tree``; build and validate ``cls``."""
    for key, value in (overrides or {}).items():
        assign(tree, key, value)
    for item in sets or []:
        key, value = parse_set(item)
        assign(tree, key, value)
    return from_dict(cls, tree).validate()


def preset_label(preset: str) -> str:
    """The name a run records for its preset: the name, or a YAML file's stem."""
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


def parse_set(item: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; values are read as YAML scalars or lists."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, converting and checking every value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown configuration key '{prefix}{unknown[0]}'; valid keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if is_dataclass(hint):
            kwargs[f.name] = from_dict(hint, data[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, f"{prefix}{f.name}")
    return cls(**kwargs)


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(plain(asdict(cfg)), sort_keys=False))


def load_config(path: Path, cls: type = Config) -> Any:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read configuration {path}: {e}") from None
    return from_dict(cls, data)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------
# helpers


def assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plain(obj: Any) -> Any:
    """Tuples to lists so that YAML stays plain."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key} cannot be {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")
