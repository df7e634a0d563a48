"""The vanilla MAE objective: reconstruct the masked patches of each augmented image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.state import load_state_dict
from imae.config import Config
from imae.data.loader import Batch
from imae.engine.objectives.base import Objective
from imae.engine.objectives.common import model_overrides, note_eps
from imae.models.registry import create_model


class MAEObjective(Objective):
    """Vanilla MAE: reconstruct the masked patches of each augmented image."""

    kind = "mae"

    def __init__(self, cfg: Config) -> None:
        self.mask_ratio = cfg.train.mask_ratio
        self.model: nn.Module = create_model(cfg.model.name, **model_overrides(cfg))
        if getattr(self.model, "kind", "mae") != "mae":
            raise ValueError(f"model {cfg.model.name} is not a vanilla MAE; use method imae for it")

    def __call__(self, net: nn.Module, batch: Batch, mask_ratio: float | None = None) -> dict[str, torch.Tensor]:
        """net: the model, possibly wrapped by DDP / torch.compile; ``mask_ratio``: None = train.mask_ratio.
        Returns {"loss": scalar}."""
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        x = batch.images
        noise = torch.rand(x.shape[0], self.model.arch.num_patches, generator=batch.generator, device=x.device)
        out = net(x, mask_ratio=mask_ratio, noise=noise)
        return {"loss": out["loss"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"kind": "mae", "arch": self.model.arch.to_dict()}

    def load_init(self, ck: Checkpoint) -> None:
        """Start from a checkpoint's weights (ours, the official MAE's, a Hugging Face folder), strictly."""
        load_state_dict(self.model, ck.model, source=str(ck.path))
        note_eps(ck, self.model)
