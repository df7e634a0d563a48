"""Rebuild a model from a checkpoint: ours (architecture stored inside) or an official MAE release.

Official checkpoints store only weights; their architecture is read off the tensor shapes. The number
of attention heads cannot be read off shapes: the official sizes' head counts are used (ViT-B 12,
ViT-L/H 16, decoder 16) and widths elsewhere get one head per 64 channels (decoder: per 32);
``overrides`` (e.g. ``num_heads=...``) correct that.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import torch

from imae.checkpoints.state import load_state_dict, strip_prefixes
from imae.errors import CheckpointError
from imae.models.imae import IMAE, IMAEOptions
from imae.models.mae import MAEArch, MaskedAutoencoder

ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {512: 16, 128: 4, 192: 6, 64: 2}


def _depth(sd: dict[str, torch.Tensor], prefix: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def infer_arch(state_dict: dict[str, torch.Tensor], **overrides: Any) -> MAEArch:
    """The MAEArch of an official-layout state dict (encoder-only releases get the default decoder)."""
    sd = strip_prefixes(state_dict)
    try:
        w = sd["patch_embed.proj.weight"]  # [D, C, p, p]
        length = sd["pos_embed"].shape[1] - 1
    except KeyError as e:
        raise CheckpointError(f"the checkpoint is not an MAE/ViT state dict (no {e.args[0]})") from None
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    grid = int(round(length**0.5))
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    arch: dict[str, Any] = dict(img_size=grid * p, patch_size=p, in_chans=c, embed_dim=d, depth=_depth(sd, "blocks"),
                                num_heads=ENCODER_HEADS.get(d, max(1, d // 64)),
                                mlp_ratio=float(fc1.shape[0] / d) if fc1 is not None else 4.0)
    if "decoder_pos_embed" in sd:
        dd = int(sd["decoder_pos_embed"].shape[-1])
        arch.update(decoder_embed_dim=dd, decoder_depth=_depth(sd, "decoder_blocks"),
                    decoder_num_heads=DECODER_HEADS.get(dd, max(1, dd // 32)))
    arch.update({k: v for k, v in overrides.items() if v is not None})
    return MAEArch(**arch)


def _arch_of(ck: dict[str, Any], **overrides: Any) -> MAEArch:
    stored = ck.get("arch")
    if isinstance(stored, dict):
        valid = {f.name for f in fields(MAEArch)}
        return MAEArch(**{**{k: v for k, v in stored.items() if k in valid}, **overrides})
    return infer_arch(ck["model"], **overrides)


def imae_options(ck: dict[str, Any]) -> IMAEOptions:
    stored = ck.get("imae_options") or {}
    valid = {f.name for f in fields(IMAEOptions)}
    return IMAEOptions(**{k: v for k, v in stored.items() if k in valid})


def is_imae_state(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("decoder_embed_sub.") for k in strip_prefixes(state_dict))


def refuse_classifier(ck: dict[str, Any], use: str = "this command") -> None:
    """A one-line CheckpointError when ``ck`` is a fine-tuned classifier (``imae finetune``'s timm ViT, or any
    state dict with a classification ``head``), which ``use`` cannot take: it needs a pre-trained MAE."""
    sd = ck.get("model") if isinstance(ck.get("model"), dict) else {}
    if ck.get("kind") != "vit" and not any(k.startswith("head.") for k in strip_prefixes(sd)):
        return
    source = ck.get("source")
    instead = (f"pass the MAE it was fine-tuned from ({source})" if source else
               "pass the pre-trained MAE it was fine-tuned from")
    raise CheckpointError(f"{ck.get('_path', 'the checkpoint')} is a fine-tuned classifier (a ViT with a "
                          f"classification head, as `imae finetune` writes), not a pre-trained MAE; {use} needs the "
                          f"MAE: {instead}")


def model_from_checkpoint(ck: dict[str, Any], **overrides: Any) -> MaskedAutoencoder:
    """The checkpoint's own model (MaskedAutoencoder or IMAE) with its weights, strictly loaded.

    An encoder-only official release loads into a MaskedAutoencoder whose decoder stays untrained. A
    fine-tuned classifier is refused in one line (:func:`refuse_classifier`).
    """
    refuse_classifier(ck)
    arch = _arch_of(ck, **overrides)
    source = ck.get("_path", "checkpoint")
    if ck.get("kind") == "imae" or is_imae_state(ck["model"]):
        model: MaskedAutoencoder = IMAE(arch, imae_options(ck))
        load_state_dict(model, ck["model"], source=source)
        return model
    model = MaskedAutoencoder(arch)
    encoder_only = "decoder_pos_embed" not in strip_prefixes(ck["model"])
    load_state_dict(model, ck["model"], source=source,
                    ignore=("decoder", "mask_token") if encoder_only else ())
    model.encoder_only = encoder_only
    return model


def mae_from_checkpoint(ck: dict[str, Any], **overrides: Any) -> MaskedAutoencoder:
    """A vanilla MaskedAutoencoder from any checkpoint (an i-MAE's is converted: see IMAE.mae_state_dict)."""
    model = model_from_checkpoint(ck, **overrides)
    if isinstance(model, IMAE):
        mae = MaskedAutoencoder(model.arch)
        mae.load_state_dict(model.mae_state_dict())
        return mae
    return model
