"""Our encoder as a timm ``VisionTransformer`` state dict (``.safetensors``), plus the call that builds it.

Our encoder's names are timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N...``,
``norm``), so the export is the encoder's tensors as they are. The model that loads them strictly is a
timm ViT without head (``num_classes=0``) and with cls pooling; its ``forward_features(x)[:, 0]`` equals
our ``forward_features(x)[:, 0]``. A layer-norm eps other than timm's 1e-6 needs ``norm_layer=partial(...)``,
which JSON cannot hold: the written ``.json`` has it as ``layer_norm_eps`` and in the ``python`` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imae.atomic import write_atomic
from imae.checkpoints import safetensors_io

_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}
TIMM_EPS = 1e-6


def timm_name(arch: dict[str, Any]) -> str:
    """timm's registered name of this size if it has one (e.g. ``vit_base_patch16_224``), else a generic one;
    the keyword arguments of :func:`timm_kwargs` set every size anyway."""
    import timm

    name = f"vit_{_SIZES.get(arch['embed_dim'], 'base')}_patch{arch['patch_size']}_{arch['img_size']}"
    return name if name in timm.list_models(name) else "vit_base_patch16_224"


def timm_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able keyword arguments of ``timm.create_model`` for a ViT of our encoder's architecture."""
    sizes = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    return {"pretrained": False, **{k: arch[k] for k in sizes}, "qkv_bias": True, "class_token": True,
            "global_pool": "token", "num_classes": 0}


def timm_call(arch: dict[str, Any], weights: Path) -> str:
    """Python that builds the timm model and loads ``weights`` strictly (one statement per line)."""
    args = ", ".join([repr(timm_name(arch))] + [f"{k}={v!r}" for k, v in timm_kwargs(arch).items()])
    lines = ["import timm, torch, functools, safetensors.torch"]
    if arch["layer_norm_eps"] != TIMM_EPS:
        args += f", norm_layer=functools.partial(torch.nn.LayerNorm, eps={arch['layer_norm_eps']!r})"
    lines.append(f"model = timm.create_model({args})")
    lines.append(f"model.load_state_dict(safetensors.torch.load_file({str(weights)!r}))")
    return "\n".join(lines)


def save_timm(encoder: dict[str, torch.Tensor], arch: dict[str, Any], path: Path) -> list[Path]:
    """Write ``encoder`` (an encoder's state dict, our names) to ``path`` (``.safetensors``) and
    ``<stem>.timm.json`` beside it; ``arch``: MAEArch's fields."""
    path = Path(path)
    safetensors_io.write(encoder, path)
    info = {"model_name": timm_name(arch), "kwargs": timm_kwargs(arch), "layer_norm_eps": arch["layer_norm_eps"],
            "python": timm_call(arch, path)}
    meta = path.with_name(f"{path.stem}.timm.json")
    write_atomic(meta, json.dumps(info, indent=2) + "\n")
    return [path, meta]
