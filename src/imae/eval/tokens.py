"""Tokens of frozen encoders under one seeded mask per pair: the inputs of token-level separability.

Every pair gets its own mask, drawn once from a generator seeded by the evaluation seed, so every model
compared on the same pairs sees the same patches. A mask is MAE's: ``noise`` [P, L], the patches with
the lowest noise stay visible. ``positions`` [P, 1+K] names the place of each scored token: 0 for cls,
1 + patch index for the K visible patches, in the order the encoder returns them.

At mask ratio 0 (unmasked) the encoder sees every patch and its tokens are read at the same positions,
so both ratios score the same tokens of the same pairs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from imae.models.mae import MAEArch, MaskedAutoencoder


def pair_noise(num_pairs: int, num_patches: int, seed: int) -> torch.Tensor:
    """One mask per pair: uniform noise [P, L] from a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    return torch.rand(num_pairs, num_patches, generator=g)


def visible_count(num_patches: int, ratio: float) -> int:
    return int(num_patches * (1 - ratio))  # as MaskedAutoencoder.random_masking


def positions(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """noise [P, L] -> token positions [P, 1+K]: cls (0), then 1 + the visible patches in the encoder's order."""
    keep = torch.argsort(noise, dim=1)[:, :visible_count(noise.shape[1], ratio)]
    return torch.cat([torch.zeros(noise.shape[0], 1, dtype=torch.long), keep + 1], dim=1)


def encoder_tokens(model: MaskedAutoencoder, x: torch.Tensor, noise: torch.Tensor, ratio: float,
                   pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images x [B, C, H, W] -> (tokens [B, T, D] at ``pos`` [B, T], cls [B, D], patch mean [B, D]).

    ``ratio > 0``: the encoder sees only the visible patches of ``noise`` [B, L] (then ``pos`` must be
    ``positions(noise, ratio)``). ``ratio == 0``: it sees every patch; the tokens at ``pos`` are read out.
    The pooled cls and patch mean are of what the encoder saw."""
    if ratio > 0:
        h, _, _ = model.forward_encoder(x, ratio, noise)  # [B, 1+K, D], visible patches in argsort(noise) order
        return h, h[:, 0], h[:, 1:].mean(1)
    full = model.forward_features(x)  # [B, 1+L, D], raster order
    return torch.gather(full, 1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1])), full[:, 0], full[:, 1:].mean(1)


def encoder_layer_tokens(model: MaskedAutoencoder, x: torch.Tensor, noise: torch.Tensor, ratio: float,
                         pos: torch.Tensor, layers: list[int]) -> dict[int, tuple[torch.Tensor, ...]]:
    """:func:`encoder_tokens` at each block of ``layers`` (its output with the final norm applied), one pass:
    {k: (tokens [B, T, D] at ``pos``, cls [B, D], patch mean [B, D])}."""
    patches = model.embed_patches(x)
    if ratio > 0:
        kept, _, _ = model.random_masking(patches, ratio, noise)
        return {k: (h, h[:, 0], h[:, 1:].mean(1)) for k, h in model.encode_layers(kept, layers).items()}
    out = {}
    for k, full in model.encode_layers(patches, layers).items():
        out[k] = (torch.gather(full, 1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1])), full[:, 0],
                  full[:, 1:].mean(1))
    return out


def pixel_tokens(model: MaskedAutoencoder, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The pixel baseline's predictors: each scored patch's own pixels [B, T, p*p*C]; the cls position gets
    the mean of the scored patches' pixels."""
    patches = model.patchify(x)  # [B, L, p*p*C]
    idx = (pos[:, 1:] - 1).unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    seen = torch.gather(patches, 1, idx)
    return torch.cat([seen.mean(1, keepdim=True), seen], dim=1)


def distill_map(model: MaskedAutoencoder, has_decoder: bool = True) -> nn.Linear | None:
    """The map into the distillation space of a reference: an MAE's ``decoder_embed``; an i-MAE's dominant
    branch (its MAE form, see ``IMAE.mae_state_dict``); None for an encoder-only release (``has_decoder``
    False: its checkpoint held no decoder)."""
    if getattr(model, "kind", "mae") == "imae":
        return model.decoder_embed_dom if model.decoder_embed_dom is not None else model.decoder_embed_sub
    if not has_decoder:
        return None
    return model.decoder_embed


def random_encoder(arch: MAEArch, seed: int) -> MaskedAutoencoder:
    """An untrained MAE of ``arch`` (MAE's initialisation), the same for every call with the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedAutoencoder(arch)
    return model.eval().requires_grad_(False)
