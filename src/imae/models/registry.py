"""Named model factories (``mae_vit_tiny_patch4`` ...) and ``create_model``, in the style of timm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from imae.errors import ConfigError
from imae.models.imae import IMAE
from imae.models.mae import MAEArch, MaskedAutoencoder

# name -> architecture defaults; every field can be overridden in create_model(name, **overrides)
_ARCHS: dict[str, dict[str, Any]] = {
    # 16 px digits: the minutes-long embedded default
    "vit_micro_patch2": dict(img_size=16, patch_size=2, embed_dim=96, depth=4, num_heads=3,
                             decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2),
    # 32 px CIFAR (ViT-Tiny encoder as the i-MAE authors' CIFAR teacher)
    "vit_tiny_patch4": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                            decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "vit_tiny_patch2": dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3,
                            decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    # 64 px Tiny-ImageNet
    "vit_small_patch8": dict(img_size=64, patch_size=8, embed_dim=384, depth=12, num_heads=6,
                             decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=6),
    # 224 px ImageNet: the official MAE configurations (decoder 512 wide, 8 deep, 16 heads)
    "vit_base_patch16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_large_patch16": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_huge_patch14": dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}

# kind prefix -> constructor taking an MAEArch
_KINDS: dict[str, Callable[..., nn.Module]] = {"mae": MaskedAutoencoder, "imae": IMAE}


def list_models() -> list[str]:
    return [f"{kind}_{arch}" for kind in _KINDS for arch in _ARCHS]


def resolve_arch(name: str, **overrides: Any) -> tuple[str, MAEArch]:
    """``"mae_vit_tiny_patch4", depth=2`` -> ("mae", MAEArch(...)). Unknown names raise ConfigError."""
    kind, _, arch_name = name.partition("_")
    if kind not in _KINDS or arch_name not in _ARCHS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    fields = dict(_ARCHS[arch_name])
    unknown = set(overrides) - set(MAEArch.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(MAEArch.__dataclass_fields__)}")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return kind, MAEArch(**fields)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("mae_vit_tiny_patch4", depth=2, norm_pix_loss=True)``.

    Keyword arguments override fields of :class:`~imae.models.mae.MAEArch`; other keyword arguments are
    passed to the model class (for i-MAE: the fields of ``IMAEOptions`` and ``teacher``), e.g.
    ``create_model("imae_vit_tiny_patch4", branches="sub", teacher=mae)``.
    """
    arch_keys = set(MAEArch.__dataclass_fields__)
    arch_over = {k: v for k, v in overrides.items() if k in arch_keys}
    extra = {k: v for k, v in overrides.items() if k not in arch_keys}
    kind, arch = resolve_arch(name, **arch_over)
    return _KINDS[kind](arch, **extra)
