"""The vanilla Masked Autoencoder (He et al., 2022), checkpoint-compatible with the official release.

Parameter names and shapes equal those of ``facebookresearch/mae``'s ``MaskedAutoencoderViT`` for the
same configuration, so ``model.load_state_dict(torch.load(path)["model"])`` loads an official
checkpoint strictly. Methods read in data-flow order: patchify -> random_masking -> forward_encoder ->
forward_decoder -> forward_loss -> forward. Shapes: N batch, L patches, D encoder width, D' decoder
width, p patch size, C channels; masks are 1 for removed patches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from imae.data.augment import normalize
from imae.data.datasets import NORMALIZATION, resize_images
from imae.errors import ConfigError
from imae.models.pos_embed import sincos_2d

# the official MAE's pixel statistics (ImageNet's): what preprocess uses unless a checkpoint names its data set
IMAGENET_NORMALIZATION = NORMALIZATION["imagefolder"]


@dataclass(frozen=True)
class MAEArch:
    """Architecture of a :class:`MaskedAutoencoder`; stored in checkpoints to rebuild the model."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    layer_norm_eps: float = 1e-6  # every LayerNorm; the official MAE's (Hugging Face ViTMAE's default is 1e-12)

    def __post_init__(self) -> None:
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"image size {self.img_size} is not divisible by patch size {self.patch_size}; "
                              f"pick an image size that is a multiple of {self.patch_size}")
        for width, heads, what in ((self.embed_dim, self.num_heads, "embed_dim"),
                                   (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim")):
            if width % heads:
                raise ConfigError(f"{what}={width} is not divisible by its number of heads {heads}")
            if width % 4:
                raise ConfigError(f"{what}={width} must be a multiple of 4 for 2-D sin-cos position embeddings")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float, eps: float) -> nn.ModuleList:
    norm = partial(nn.LayerNorm, eps=eps)
    return nn.ModuleList([Block(width, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])


class MaskedAutoencoder(nn.Module):
    """ViT encoder + lightweight decoder trained to reconstruct masked patches."""

    kind = "mae"

    def __init__(self, arch: MAEArch) -> None:
        super().__init__()
        self.arch = arch
        # per-channel (mean, std) of [0, 1] pixels that ``preprocess`` applies: the training data set's when the
        # model is built from one of our checkpoints (imae.load), else ImageNet's, as the official MAE's
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_NORMALIZATION
        self.heads_from: dict[str, str] | None = None  # built from a checkpoint: how each head count was decided
        a = arch
        # encoder
        self.patch_embed = PatchEmbed(a.img_size, a.patch_size, a.in_chans, a.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, a.num_patches + 1, a.embed_dim), requires_grad=False)
        self.blocks = _blocks(a.embed_dim, a.depth, a.num_heads, a.mlp_ratio, a.layer_norm_eps)
        self.norm = nn.LayerNorm(a.embed_dim, eps=a.layer_norm_eps)
        # decoder
        self.decoder_embed = nn.Linear(a.embed_dim, a.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, a.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, a.num_patches + 1, a.decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = _blocks(a.decoder_embed_dim, a.decoder_depth, a.decoder_num_heads, a.mlp_ratio,
                                      a.layer_norm_eps)
        self.decoder_norm = nn.LayerNorm(a.decoder_embed_dim, eps=a.layer_norm_eps)
        self.decoder_pred = nn.Linear(a.decoder_embed_dim, a.patch_size**2 * a.in_chans, bias=True)
        self.initialize_weights()

    @property
    def norm_pix_loss(self) -> bool:
        return self.arch.norm_pix_loss

    # ------------------------------------------------------------------------------------------
    # initialisation (as the official MAE)

    def initialize_weights(self) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.arch.grid_size)[None])
        self.decoder_pos_embed.data.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.arch.grid_size)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, not nn.Conv2d
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_module)

    # ------------------------------------------------------------------------------------------
    # data flow

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> [N, L, p*p*C], patches in raster order, pixels (row, col, channel)."""
        p, c = self.arch.patch_size, self.arch.in_chans
        n, _, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L, p*p*C] -> imgs [N, C, H, W] (square images)."""
        p, c = self.arch.patch_size, self.arch.in_chans
        g = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the ``int(L * (1 - mask_ratio))`` patches with the lowest noise, per sample.

        x: [N, L, D]; noise: [N, L] or None (uniform). Returns x_kept [N, K, D], mask [N, L]
        (0 keep, 1 remove), ids_restore [N, L] (argsort that undoes the shuffle).
        """
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape {(n, length)}, got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> patch tokens with position embeddings [N, L, D] (no cls token)."""
        if imgs.shape[-1] != self.arch.img_size or imgs.shape[-2] != self.arch.img_size:
            raise ValueError(f"the model expects {self.arch.img_size}x{self.arch.img_size} images, "
                             f"got {imgs.shape[-2]}x{imgs.shape[-1]}")
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens [N, K, D] -> latent [N, 1+K, D]: prepend cls, run blocks, final norm."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def encode_layers(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Patch tokens [N, K, D] -> {k: the output of block k (1 = first) with the final norm applied,
        [N, 1+K, D]} for every k of ``layers``; the blocks after the deepest one asked for are not run. Block
        ``depth``'s entry is :meth:`encode_tokens`'s output, computed the same way."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        want, out = set(layers), {}
        for k, blk in enumerate(self.blocks[:max(layers)], start=1):
            x = blk(x)
            if k in want:
                out[k] = self.norm(x)
        return out

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                        noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, C, H, W] -> latent [N, 1+K, D], mask [N, L], ids_restore [N, L]."""
        x = self.embed_patches(imgs)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        return self.encode_tokens(x), mask, ids_restore

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [N, C, H, W] (or one, [C, H, W]) -> this model's input, float [N, C, S, S] with S
        ``arch.img_size``: resized when their size differs (bilinear, antialiased, as the data sets are), then
        normalised with ``self.normalization``."""
        if images.dtype != torch.uint8 or images.dim() not in (3, 4) or images.shape[-3] != self.arch.in_chans:
            raise ValueError(f"preprocess takes uint8 images [N, {self.arch.in_chans}, H, W], got "
                             f"{images.dtype} {tuple(images.shape)}")
        images = resize_images(images if images.dim() == 4 else images[None], self.arch.img_size)
        return normalize(images, *self.normalization)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Mask-free encoding for evaluation: imgs [N, C, H, W] -> [N, 1+L, D] (cls first)."""
        return self.encode_tokens(self.embed_patches(imgs))

    def decode_tokens(self, z: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decoder-width tokens z [N, 1+K, D'] -> pixel predictions [N, L, p*p*C].

        Appends mask tokens, unshuffles to raster order, adds position embeddings, runs the decoder.
        """
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - z.shape[1], -1)
        x = torch.cat([z[:, 1:, :], mask_tokens], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, z.shape[2]))
        x = torch.cat([z[:, :1, :], x], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, 1+K, D] -> pixel predictions [N, L, p*p*C]."""
        return self.decode_tokens(self.decoder_embed(latent), ids_restore)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target [N, L, p*p*C]: the patches, per-patch normalised if norm_pix_loss.

        Always float32 with autocast off: under CUDA autocast ``einsum`` returns bf16, and a per-patch
        mean and variance of bf16 pixels move the target by about 1e-4 MSE."""
        with torch.autocast(imgs.device.type, enabled=False):
            target = self.patchify(imgs.float())
            if self.norm_pix_loss:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over removed patches only. Returns a scalar."""
        return masked_mse(pred, self.target(imgs), mask)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """imgs [N, C, H, W] -> {"loss": scalar, "pred": [N, L, p*p*C], "mask": [N, L]}."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.forward_loss(imgs, pred, mask), "pred": pred, "mask": mask}

    # ------------------------------------------------------------------------------------------
    # parameters

    def encoder_keys(self) -> list[str]:
        """State-dict keys of the encoder (what evaluation and fine-tuning use)."""
        prefixes = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
        return [k for k in self.state_dict() if k.startswith(prefixes)]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target: [N, L, P]; mask: [N, L] (1 = removed) -> mean over removed patches of per-patch MSE."""
    loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # as the official JAX ViT
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
