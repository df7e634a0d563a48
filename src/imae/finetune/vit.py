"""A timm ``VisionTransformer`` classifier built from our encoder, and layer-wise lr decay groups.

Our encoder's parameter names are timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N...``, ``norm``), so its weights load strictly; only the new head (and, with mean pooling,
``fc_norm``) is not in the checkpoint. With cls pooling the classifier's features equal our
``forward_features(x)[:, 0]`` exactly. With mean pooling timm normalises after pooling (``fc_norm``);
``fc_norm`` starts from the encoder's final norm.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from imae.checkpoints.state import load_state_dict
from imae.models.mae import MaskedAutoencoder
from imae.runtime.optim import NO_WEIGHT_DECAY


def vit_from_encoder(model: MaskedAutoencoder, num_classes: int, drop_path: float = 0.0,
                     pool: str = "cls") -> VisionTransformer:
    """timm ViT with ``model``'s encoder weights and a fresh head (trunc-normal std 2e-5, as MAE)."""
    a = model.arch
    vit = VisionTransformer(img_size=a.img_size, patch_size=a.patch_size, in_chans=a.in_chans,
                            num_classes=num_classes, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads,
                            mlp_ratio=a.mlp_ratio, qkv_bias=True, drop_path_rate=drop_path,
                            global_pool="token" if pool == "cls" else "avg",
                            norm_layer=partial(nn.LayerNorm, eps=a.layer_norm_eps))
    sd = {k: v for k, v in model.state_dict().items() if k in set(model.encoder_keys())}
    if pool != "cls":  # timm: norm after pooling
        sd = {("fc_norm." + k[len("norm."):] if k.startswith("norm.") else k): v for k, v in sd.items()}
    load_state_dict(vit, sd, source="the encoder", ignore=("head.",))
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    nn.init.zeros_(vit.head.bias)
    return vit


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, ``num_layers`` (= depth + 1) for the final norm and head."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_decay_groups(vit: VisionTransformer, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with ``lr_scale = layer_decay ** (depth + 1 - layer_id)`` (MAE's / BEiT's rule) and
    no weight decay for 1-D tensors and pre-training's no-decay names (the tokens, the position embeddings).
    Not timm's ``param_groups_layer_decay``: it puts the final norm with the last block, MAE with the head."""
    num_layers = len(vit.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in NO_WEIGHT_DECAY)
        lid = layer_id(name, num_layers)
        g = groups.setdefault((lid, decay), {"params": [], "names": [], "lr_scale": layer_decay ** (num_layers - lid),
                                             "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())
