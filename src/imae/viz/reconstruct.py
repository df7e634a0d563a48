"""Reconstructions for the figures: what a checkpoint's decoder makes of a (masked) mixture or image.

Shown images are the decoder's predictions for every patch (visible ones included), de-normalised to
[0, 1]. For ``norm_pix_loss`` models the per-patch normalisation is undone with the mean and variance of
the image each branch is asked to reconstruct (as MAE's demo does); such reconstructions borrow those
statistics from the ground truth.
"""

from __future__ import annotations

import torch

from imae.data.mixing import mix
from imae.models.imae import IMAE
from imae.models.mae import MaskedAutoencoder


def as_mae(model: MaskedAutoencoder) -> MaskedAutoencoder:
    """A vanilla MAE view of ``model`` (an i-MAE decodes with its dominant branch, see IMAE.mae_state_dict)."""
    if not isinstance(model, IMAE):
        return model
    mae = MaskedAutoencoder(model.arch)
    mae.load_state_dict(model.mae_state_dict())
    p = next(model.parameters())
    return mae.to(p.device).eval()


def to_unit(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images [N, C, H, W] -> pixels in [0, 1] (CPU)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1).cpu()


def _images(model: MaskedAutoencoder, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Predicted patches [N, L, p*p*C] -> normalised images [N, C, H, W] (norm_pix undone with target's stats)."""
    if model.norm_pix_loss:
        t = model.patchify(target)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    return model.unpatchify(pred)


def masked_view(model: MaskedAutoencoder, x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x [N, C, H, W] with removed patches (mask [N, L], 1 = removed) set to ``fill`` (normalised units)."""
    patches = model.patchify(x)
    patches = torch.where(mask.bool().unsqueeze(-1), torch.full_like(patches, fill), patches)
    return model.unpatchify(patches)


@torch.inference_mode()
def reconstruct_mixture(model: MaskedAutoencoder, x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float,
                        mask_ratio: float, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images [N, C, H, W] -> {"mixture", "masked", "sub", "dom"} images [N, C, H, W].

    An i-MAE reconstructs both sources from its branches (``dom`` absent with one branch); a vanilla MAE
    has one reconstruction of the mixture (``rec``).
    """
    model.eval()
    m = mix(x_sub, x_dom, alpha)
    h, mask, ids_restore = model.forward_encoder(m, mask_ratio, noise)
    out = {"mixture": m, "masked": masked_view(model, m, mask)}
    if isinstance(model, IMAE):
        z_sub, z_dom = model.split(h)
        pred_sub, pred_dom = model.decode_branches(z_sub, z_dom, ids_restore)
        out["sub"] = _images(model, pred_sub, x_sub)
        if pred_dom is not None:
            out["dom"] = _images(model, pred_dom, x_dom)
    else:
        out["rec"] = _images(model, model.forward_decoder(h, ids_restore), m)
    return out


@torch.inference_mode()
def reconstruct(model: MaskedAutoencoder, x: torch.Tensor, mask_ratio: float,
                noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clean images -> {"masked": visible patches only, "rec": prediction with the visible patches pasted}."""
    mae = as_mae(model)
    latent, mask, ids_restore = mae.forward_encoder(x, mask_ratio, noise)
    pred = _images(mae, mae.forward_decoder(latent, ids_restore), x)
    keep = mae.unpatchify(mask.unsqueeze(-1).expand(-1, -1, mae.patchify(x).shape[-1]))  # 1 where removed
    return {"masked": masked_view(mae, x, mask), "rec": x * (1 - keep) + pred * keep}
