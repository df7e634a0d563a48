"""Training objectives: turn a batch into the model's inputs and return its loss terms.

An objective owns the (unwrapped) model and draws every random input of a step (masking noise, and for
i-MAE the alphas and partners) from the batch's generator, so a step is a pure function of
(seed, epoch, step, rank).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from imae.config import Config
from imae.data.loader import Batch
from imae.engine.checkpoint import load_state_dict
from imae.engine.logs import info
from imae.models.registry import create_model


def model_overrides(cfg: Config) -> dict[str, Any]:
    """Architecture overrides from the configuration; ``data.img_size`` sets the model's image size."""
    over = cfg.model.overrides()
    if cfg.data.img_size is not None:
        over.setdefault("img_size", cfg.data.img_size)
    return over


class MAEObjective:
    """Vanilla MAE: reconstruct the masked patches of each augmented image."""

    kind = "mae"

    def __init__(self, cfg: Config) -> None:
        self.model: nn.Module = create_model(cfg.model.name, **model_overrides(cfg))
        if getattr(self.model, "kind", "mae") != "mae":
            raise ValueError(f"model {cfg.model.name} is not a vanilla MAE; use method imae for it")

    def __call__(self, net: nn.Module, batch: Batch, mask_ratio: float) -> dict[str, torch.Tensor]:
        """net: the model, possibly wrapped by DDP / torch.compile. Returns {"loss": scalar}."""
        x = batch.images
        noise = torch.rand(x.shape[0], self.model.arch.num_patches, generator=batch.generator, device=x.device)
        out = net(x, mask_ratio=mask_ratio, noise=noise)
        return {"loss": out["loss"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"kind": "mae", "arch": self.model.arch.to_dict()}

    def load_init(self, ck: dict[str, Any]) -> None:
        """Start from a checkpoint's weights (ours, the official MAE's, a Hugging Face folder), strictly."""
        load_state_dict(self.model, ck["model"], source=ck.get("_path", "--init-from"))
        note_eps(ck, self.model)


def note_eps(ck: dict[str, Any], model: nn.Module) -> None:
    """Say so when --init-from weights were trained with another layer-norm eps (it is not in a state dict)."""
    stored = (ck.get("arch") or {}).get("layer_norm_eps") if isinstance(ck.get("arch"), dict) else None
    own = model.arch.layer_norm_eps
    if stored is not None and stored != own:
        info(f"note: {ck.get('_path', '--init-from')} was trained with layer_norm_eps {stored:g}, this model uses "
             f"{own:g}; --set model.layer_norm_eps={stored:g} matches it")


def build_objective(cfg: Config):
    if cfg.method == "mae":
        return MAEObjective(cfg)
    from imae.engine.imae_objective import IMAEObjective  # noqa: PLC0415  (i-MAE pulls in the teacher)

    return IMAEObjective(cfg)
