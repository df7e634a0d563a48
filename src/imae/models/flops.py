"""Analytic FLOP counts of MAE and i-MAE training steps (a multiply-add counts as 2 FLOPs).

Only matrix products are counted (linear layers, attention scores and weighted sums); norms, softmax,
GELU and the optimiser are a few percent at these widths and are left out. A training step costs
forward + backward = 3x the forward FLOPs of every part that gets gradients (the patch embedding 2x: the
image needs no gradient), plus the forward of the frozen teacher.
"""

from __future__ import annotations

from imae.models.mae import MAEArch


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
    """One ViT block on ``tokens`` tokens: qkv, attention scores, weighted values, projection, MLP."""
    t, d = tokens, width
    hidden = mlp_ratio * d
    return 2 * t * d * 3 * d + 2 * t * t * d + 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * hidden


def patch_embed_flops(arch: MAEArch) -> float:
    return 2 * arch.num_patches * arch.patch_size**2 * arch.in_chans * arch.embed_dim


def encoder_flops(arch: MAEArch, visible: int) -> float:
    """Patch embedding of all L patches, then ``depth`` blocks on cls + ``visible`` tokens."""
    return patch_embed_flops(arch) + arch.depth * block_flops(visible + 1, arch.embed_dim, arch.mlp_ratio)


def decoder_flops(arch: MAEArch, visible: int, embeds: int = 1) -> float:
    """``embeds`` decoder_embed maps of cls + visible tokens, then the decoder on all L + 1 tokens."""
    t = arch.num_patches + 1
    embed = embeds * 2 * (visible + 1) * arch.embed_dim * arch.decoder_embed_dim
    blocks = arch.decoder_depth * block_flops(t, arch.decoder_embed_dim, arch.mlp_ratio)
    pred = 2 * t * arch.decoder_embed_dim * arch.patch_size**2 * arch.in_chans
    return embed + blocks + pred


def visible_tokens(arch: MAEArch, mask_ratio: float) -> int:
    return int(arch.num_patches * (1 - mask_ratio))


def mae_train_flops(arch: MAEArch, mask_ratio: float = 0.75) -> float:
    """FLOPs per image of one MAE training step (forward + backward)."""
    k = visible_tokens(arch, mask_ratio)
    return 3 * (encoder_flops(arch, k) + decoder_flops(arch, k)) - patch_embed_flops(arch)


def imae_train_flops(arch: MAEArch, teacher: MAEArch | None = None, mask_ratio: float = 0.75,
                     branches: str = "two", distill: bool = True) -> float:
    """FLOPs per image of one i-MAE step: the student on the mixture (two branch maps, the decoder on
    each branch) with backward, plus the teacher's forward on each clean image (visible tokens only)."""
    k = visible_tokens(arch, mask_ratio)
    n = 2 if branches == "two" else 1
    dec = decoder_flops(arch, k, embeds=n) + (n - 1) * (decoder_flops(arch, k, embeds=0))
    student = 3 * (encoder_flops(arch, k) + dec) - patch_embed_flops(arch)
    if not distill:
        return student
    t = teacher or arch
    t_k = visible_tokens(t, mask_ratio)
    teacher_fwd = encoder_flops(t, t_k) + 2 * (t_k + 1) * t.embed_dim * t.decoder_embed_dim
    return student + n * teacher_fwd
