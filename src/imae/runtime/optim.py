"""Optimiser and learning-rate schedule, as the official MAE: AdamW, warmup then half-cycle cosine."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay

# parameters that never get weight decay (besides every 1-D tensor: norms and biases), in pre-training and
# fine-tuning alike: the tokens and the position embeddings (timm's ViT.no_weight_decay(), and the decoder's)
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as imae's checkpoints store them: weight decay on matrices; none on norms, biases, tokens and
    position embeddings (which parameters decay: timm's ``param_groups_weight_decay``)."""
    split = param_groups_weight_decay(model, 1.0, no_weight_decay_list=NO_WEIGHT_DECAY)  # 1.0: always two
    by_decay = {bool(g["weight_decay"]): g["params"] for g in split}
    return [{"params": by_decay.get(True, []), "weight_decay": weight_decay},
            {"params": by_decay.get(False, []), "weight_decay": 0.0}]


def absolute_lr(blr: float, lr: float | None, effective_batch: int) -> float:
    """``lr = blr * effective_batch / 256`` unless an absolute ``lr`` is given."""
    return lr if lr is not None else blr * effective_batch / 256


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                device: torch.device) -> torch.optim.AdamW:
    """AdamW over pre-training's two groups (weight decay on matrices only)."""
    return adamw(param_groups(model, weight_decay), lr, betas, device)


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter groups (each may carry ``lr_scale``, see ``set_lr``), fused where torch has it."""
    # the fused kernel (CUDA and, since torch 2.4, CPU) updates every parameter in one pass;
    # tests/test_fast_paths.py checks it against the plain implementation
    fused = True if device.type in ("cuda", "cpu") else None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_at(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional ``epoch``: linear warmup to ``base_lr``, then half-cycle cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Step unless ``found_inf`` (a float flag on the device) is non-zero. A fused AdamW reads the flag on the
    device, as under GradScaler (no host sync; its step counts are left as they were); another optimiser
    has the host check it."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(found_inf):
        optimizer.step()


def grad_norm(params) -> torch.Tensor:
    """The global 2-norm of the gradients (as ``clip_grad_norm_`` computes it), without changing them."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
