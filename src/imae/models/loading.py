"""Build a model from a :class:`~imae.checkpoints.Checkpoint`: ours (architecture stored inside), a Hugging Face
folder's (its config.json's), or an official MAE release.

Official checkpoints store only weights; their architecture is read off the tensor shapes. The number
of attention heads cannot be read off shapes: it is taken where it is unambiguous (a count the checkpoint
records; the standard widths' counts of the official and timm ViTs, 192: 3, 384: 6, 768: 12, 1024: 16,
1280: 16; an explicit ``num_heads`` override) and refused in one line otherwise. The model built keeps
how it was decided in ``heads_from``. The decoder's count (which mask-free evaluations do not use) is its
standard (512: 16) or our presets' (128: 4, 192: 6, 64: 2), else one head per 32 channels, said so.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import torch

from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.state import load_state_dict
from imae.data.datasets import NORMALIZATION
from imae.errors import CheckpointError
from imae.models.imae import IMAE, IMAEOptions
from imae.models.mae import MAEArch, MaskedAutoencoder

ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {512: 16, 128: 4, 192: 6, 64: 2}
HEADS_HINT = "give it with --set num_heads=N (imae export: --num-heads N)"


class HeadCountUnknown(CheckpointError):
    """An official-layout checkpoint whose encoder width has no standard head count, and none was given."""


def _depth(sd: dict[str, torch.Tensor], prefix: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def _infer(state_dict: dict[str, torch.Tensor], overrides: dict[str, Any], source: str = "the checkpoint",
           heads_hint: str = HEADS_HINT) -> tuple[MAEArch, dict[str, str]]:
    """(architecture, how each head count was decided) of an official-layout state dict (prefixes stripped)."""
    sd = state_dict
    try:
        w = sd["patch_embed.proj.weight"]  # [D, C, p, p]
        length = sd["pos_embed"].shape[1] - 1
    except KeyError as e:
        raise CheckpointError(f"the checkpoint is not an MAE/ViT state dict (no {e.args[0]})") from None
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    grid = int(round(length**0.5))
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if overrides.get("num_heads"):
        heads, how = int(overrides["num_heads"]), f"given (num_heads={overrides['num_heads']})"
    elif d in ENCODER_HEADS:
        heads, how = ENCODER_HEADS[d], f"the standard count for width {d} (official/timm ViT)"
    else:
        known = ", ".join(f"{k}: {v}" for k, v in ENCODER_HEADS.items())
        raise HeadCountUnknown(f"cannot tell how many attention heads the {d}-wide encoder of {source} has: the "
                              f"checkpoint records none and only standard widths have a known count ({known}); "
                              f"{heads_hint}")
    arch: dict[str, Any] = dict(img_size=grid * p, patch_size=p, in_chans=c, embed_dim=d, depth=_depth(sd, "blocks"),
                                num_heads=heads, mlp_ratio=float(fc1.shape[0] / d) if fc1 is not None else 4.0)
    heads_from = {"num_heads": how}
    if "decoder_pos_embed" in sd:
        dd = int(sd["decoder_pos_embed"].shape[-1])
        arch.update(decoder_embed_dim=dd, decoder_depth=_depth(sd, "decoder_blocks"),
                    decoder_num_heads=DECODER_HEADS.get(dd, max(1, dd // 32)))
        heads_from["decoder_num_heads"] = (f"the usual count for width {dd}" if dd in DECODER_HEADS
                                           else f"guessed, one per 32 channels of width {dd}")
    if overrides.get("decoder_num_heads"):
        heads_from["decoder_num_heads"] = f"given (decoder_num_heads={overrides['decoder_num_heads']})"
    arch.update({k: v for k, v in overrides.items() if v is not None})
    return MAEArch(**arch), heads_from


def _arch_of(ck: Checkpoint, overrides: dict[str, Any],
             heads_hint: str = HEADS_HINT) -> tuple[MAEArch, dict[str, str]]:
    stored = ck.arch
    if stored is not None:
        valid = {f.name for f in fields(MAEArch)}
        heads_from = {}
        for key in ("num_heads", "decoder_num_heads"):
            given = overrides.get(key)
            heads_from[key] = ("recorded in the checkpoint" if given is None or given == stored.get(key)
                               else f"given ({key}={given}; the checkpoint records {stored.get(key)})")
        given = {k: v for k, v in overrides.items() if v is not None}
        return MAEArch(**{**{k: v for k, v in stored.items() if k in valid}, **given}), heads_from
    return _infer(ck.model, overrides, str(ck.path), heads_hint)


def imae_options(ck: Checkpoint) -> IMAEOptions:
    stored = ck.imae_options
    valid = {f.name for f in fields(IMAEOptions)}
    return IMAEOptions(**{k: v for k, v in stored.items() if k in valid})


def refuse_classifier(ck: Checkpoint, use: str = "this command") -> None:
    """A one-line CheckpointError when ``ck`` is a fine-tuned classifier (``imae finetune``'s timm ViT, or any
    state dict with a classification ``head``), which ``use`` cannot take: it needs a pre-trained MAE."""
    sd = ck.model if isinstance(ck.model, dict) else {}
    if ck.kind != "vit" and not any(k.startswith("head.") for k in sd):
        return
    source = ck.get("source")
    instead = (f"pass the MAE it was fine-tuned from ({source})" if source else
               "pass the pre-trained MAE it was fine-tuned from")
    raise CheckpointError(f"{ck.path} is a fine-tuned classifier (a ViT with a "
                          f"classification head, as `imae finetune` writes), not a pre-trained MAE; {use} needs the "
                          f"MAE: {instead}")


def check_shapes(arch: MAEArch, state_dict: dict[str, Any], source: str = "checkpoint") -> None:
    """A one-line CheckpointError when the weights' shapes (read without building anything) are not those of
    ``arch``: width, depth, patch and decoder width, so that a configuration that asks for another (say, a huge)
    model is refused before the model is allocated."""
    sd = state_dict
    e, p, c = arch.embed_dim, arch.patch_size, arch.in_chans
    d = arch.decoder_embed_dim
    expect = {"patch_embed.proj.weight": (e, c, p, p), "blocks.0.mlp.fc1.weight": (int(e * arch.mlp_ratio), e),
              "decoder_embed.weight": (d, e), "decoder_embed_sub.weight": (d, e)}
    wrong = [f"{k} {tuple(sd[k].shape)} (the configuration: {v})" for k, v in expect.items()
             if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != v]
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=arch.depth - 1)
    if depth != arch.depth:
        wrong.append(f"{depth} encoder blocks (the configuration: {arch.depth})")
    if wrong:
        raise CheckpointError(f"{source}: its weights do not match the model its configuration describes ("
                              f"{'; '.join(wrong[:3])}); the configuration belongs to another model: fix or remove it")


def model_from_checkpoint(ck: Checkpoint | dict[str, Any], heads_hint: str = HEADS_HINT,
                          **overrides: Any) -> MaskedAutoencoder:
    """The checkpoint's own model (MaskedAutoencoder or IMAE) with its weights, strictly loaded (``ck``: a
    Checkpoint, or a stored dict that holds ``"model"``).

    An encoder-only release (``not ck.has_decoder``) loads into a MaskedAutoencoder whose decoder stays
    untrained. A
    fine-tuned classifier is refused in one line (:func:`refuse_classifier`). ``model.heads_from`` says how its
    head counts were decided; ``heads_hint``: what the user does when a count cannot be told (the end of the
    one-line error).
    """
    ck = Checkpoint.of(ck)
    refuse_classifier(ck)
    arch, heads_from = _arch_of(ck, overrides, heads_hint)
    source = str(ck.path)
    check_shapes(arch, ck.model, source)  # before building: a configuration of a huge model allocates it
    if ck.kind == "imae":
        model: MaskedAutoencoder = IMAE(arch, imae_options(ck))
        load_state_dict(model, ck.model, source=source)
    else:
        model = MaskedAutoencoder(arch)
        load_state_dict(model, ck.model, source=source, ignore=() if ck.has_decoder else ("decoder", "mask_token"))
    model.heads_from = heads_from
    dataset = ((ck.config or {}).get("data") or {}).get("dataset")
    if dataset in NORMALIZATION:  # the pixel statistics it was trained with (preprocess applies them)
        model.normalization = NORMALIZATION[dataset]
    return model


def mae_from_checkpoint(ck: Checkpoint | dict[str, Any], heads_hint: str = HEADS_HINT,
                        **overrides: Any) -> MaskedAutoencoder:
    """A vanilla MaskedAutoencoder from any checkpoint (an i-MAE's is converted: see IMAE.mae_state_dict)."""
    model = model_from_checkpoint(ck, heads_hint, **overrides)
    if isinstance(model, IMAE):
        mae = MaskedAutoencoder(model.arch)
        mae.load_state_dict(model.mae_state_dict())
        mae.heads_from, mae.normalization = model.heads_from, model.normalization
        return mae
    return model
