"""Reconstructions for the figures: what a checkpoint's decoder makes of a (masked) mixture or image.

Shown as the official MAE demo shows them: the prediction only at the removed patches, the input's own
pixels at the visible ones (``paste = x * (1 - mask) + pred * mask``; for an i-MAE the input is the
mixture). The loss never trains the prediction at visible patches, so drawing it there shows noise
(the coloured speckles of earlier figures); the raw predictions stay available as ``<name>_pred``.
For ``norm_pix_loss`` models the per-patch normalisation is undone with the mean and variance of the
image each branch is asked to reconstruct (as MAE's demo does); such reconstructions borrow those
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


def removed_pixels(model: MaskedAutoencoder, mask: torch.Tensor) -> torch.Tensor:
    """mask [N, L] (1 = removed) -> [N, 1, H, W], 1 at the pixels of removed patches."""
    a = model.arch
    return model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, a.patch_size**2 * a.in_chans).float())[:, :1]


def paste(x: torch.Tensor, pred: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The input's pixels at visible patches, the prediction at removed ones (``removed`` [N, 1, H, W])."""
    return x * (1 - removed) + pred * removed


def masked_view(model: MaskedAutoencoder, x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x [N, C, H, W] with removed patches (mask [N, L], 1 = removed) set to ``fill`` (normalised units)."""
    patches = model.patchify(x)
    patches = torch.where(mask.bool().unsqueeze(-1), torch.full_like(patches, fill), patches)
    return model.unpatchify(patches)


@torch.inference_mode()
def reconstruct_mixture(model: MaskedAutoencoder, x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float,
                        mask_ratio: float, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images [N, C, H, W] -> {"mixture", "masked", "mask" [N, L], "removed" [N, 1, H, W],
    "sub", "dom" (or "rec"), and the raw predictions "sub_pred", "dom_pred" (or "rec_pred")}.

    An i-MAE reconstructs both sources from its branches (``dom`` absent with one branch); a vanilla MAE
    has one reconstruction of the mixture (``rec``). Each reconstruction is pasted: the mixture at visible
    patches (what the encoder saw), the prediction at removed ones.
    """
    model.eval()
    m = mix(x_sub, x_dom, alpha)
    h, mask, ids_restore = model.forward_encoder(m, mask_ratio, noise)
    removed = removed_pixels(model, mask)
    out = {"mixture": m, "masked": masked_view(model, m, mask), "mask": mask, "removed": removed}
    if isinstance(model, IMAE):
        z_sub, z_dom = model.split(h)
        pred_sub, pred_dom = model.decode_branches(z_sub, z_dom, ids_restore)
        out["sub_pred"] = _images(model, pred_sub, x_sub)
        if pred_dom is not None:
            out["dom_pred"] = _images(model, pred_dom, x_dom)
    else:
        out["rec_pred"] = _images(model, model.forward_decoder(h, ids_restore), m)
    for k in ("sub", "dom", "rec"):
        if f"{k}_pred" in out:
            out[k] = paste(m, out[f"{k}_pred"], removed)
    return out


@torch.inference_mode()
def reconstruct(model: MaskedAutoencoder, x: torch.Tensor, mask_ratio: float,
                noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Clean images -> {"masked": visible patches only, "rec": prediction with the visible patches pasted,
    "rec_pred": the raw prediction, "mask" [N, L], "removed" [N, 1, H, W]}."""
    mae = as_mae(model)
    latent, mask, ids_restore = mae.forward_encoder(x, mask_ratio, noise)
    pred = _images(mae, mae.forward_decoder(latent, ids_restore), x)
    removed = removed_pixels(mae, mask)
    return {"masked": masked_view(mae, x, mask), "rec": paste(x, pred, removed), "rec_pred": pred, "mask": mask,
            "removed": removed}
