"""What every training objective shares: the configured architecture and the note on a checkpoint's eps."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from imae.checkpoints.checkpoint import Checkpoint
from imae.config import Config
from imae.console import info


def model_overrides(cfg: Config) -> dict[str, Any]:
    """Architecture overrides from the configuration; ``data.img_size`` sets the model's image size."""
    over = cfg.model.overrides()
    if cfg.data.img_size is not None:
        over.setdefault("img_size", cfg.data.img_size)
    return over


def note_eps(ck: Checkpoint, model: nn.Module) -> None:
    """Say so when --init-from weights were trained with another layer-norm eps (it is not in a state dict)."""
    stored = (ck.arch or {}).get("layer_norm_eps")
    own = model.arch.layer_norm_eps
    if stored is not None and stored != own:
        info(f"note: {ck.path} was trained with layer_norm_eps {stored:g}, this model uses "
             f"{own:g}; --set model.layer_norm_eps={stored:g} matches it")
