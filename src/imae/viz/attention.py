"""Attention maps of a ViT block, computed from its qkv weights.

timm's ``Attention`` uses fused scaled-dot-product attention and never materialises the attention
matrix, so it is recomputed here from the block's own layers: ``softmax(q k^T / sqrt(d))`` of
``qkv(norm1(x))`` (with the block's q/k norms, identities in MAE's ViT).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from imae.models.mae import MaskedAutoencoder


def attention_weights(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering ``block`` [N, T, D] -> attention probabilities [N, heads, T, T] (rows: queries)."""
    attn = block.attn
    n, t, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.inference_mode()
def cls_attention(model: MaskedAutoencoder, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Normalised images [N, C, H, W] -> the cls token's attention to each patch in block ``layer``,
    [N, heads, grid, grid] (mask-free, eval mode)."""
    model.eval()
    depth = len(model.blocks)
    layer = layer % depth
    tokens = model.embed_patches(x)
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    for blk in model.blocks[:layer]:
        h = blk(h)
    probs = attention_weights(model.blocks[layer], h)[:, :, 0, 1:]  # [N, heads, L]
    g = model.arch.grid_size
    return probs.reshape(x.shape[0], -1, g, g)
