"""Batched augmentation on the training device: random resized crop + horizontal flip + normalisation.

MAE pre-trains with ``RandomResizedCrop(scale=(0.2, 1.0))`` and a flip. Applying them per image on the
CPU starves a GPU on small images, so here a whole uint8 batch is cropped at once with one affine
``grid_sample`` call. Crop boxes follow torchvision's sampling (up to 10 tries of area and log-ratio,
then a centre crop of the clamped ratio).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float] = (0.2, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", tries: int = 10) -> torch.Tensor:
    """Boxes [n, 4] as (top, left, height, width) in pixels, torchvision's RandomResizedCrop rule, batched."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u = torch.rand(n, tries, 4, generator=generator, device=device)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    idx = first.clamp_min(0)
    rows = torch.arange(n, device=device)
    w, h = w[rows, idx], h[rows, idx]
    top = torch.floor(u[rows, idx, 2] * (height - h + 1))
    left = torch.floor(u[rows, idx, 3] * (width - w + 1))
    # fallback: the whole image at the clamped aspect ratio, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    bad = first < 0
    h = torch.where(bad, torch.full_like(h, fh), h)
    w = torch.where(bad, torch.full_like(w, fw), w)
    top = torch.where(bad, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(bad, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """images float [N, C, H, W]; boxes [N, 4] (top, left, h, w) -> [N, C, size, size], bilinear.

    ``flip`` [N] bool mirrors the chosen crops horizontally.
    """
    n, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    sx = w / width
    sy = h / height
    tx = (2 * left + w) / width - 1
    ty = (2 * top + h) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def norm_stats(mean: tuple[float, ...], std: tuple[float, ...],
               device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of [0, 1] pixels as [1, C, 1, 1] float32 in [0, 255] units on ``device``."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return m, s


def normalize(images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor,
              std: tuple[float, ...] | torch.Tensor) -> torch.Tensor:
    """uint8 or float-in-[0,255] [N, C, H, W] -> float32 normalised with per-channel mean/std of [0, 1] pixels
    (tuples, or the tensors of :func:`norm_stats`)."""
    if isinstance(mean, torch.Tensor):
        m, s = mean, std
    else:
        m, s = norm_stats(mean, std, images.device)
    return (images.float() - m) / s


class Normalize:
    """:func:`normalize` with its statistics built once per device: ``torch.tensor(..., device=cuda)`` is a
    blocking host-to-device copy, which per batch would stall every step."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        stats = self._stats.get(images.device)
        if stats is None:
            stats = self._stats[images.device] = norm_stats(self.mean, self.std, images.device)
        return normalize(images, *stats)


class BatchAugment:
    """Random resized crop + flip + normalise for a uint8 batch, all on the batch's device."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True) -> None:
        self.size, self.mean, self.std = size, mean, std
        self.scale, self.ratio, self.hflip = scale, ratio, hflip
        self.normalize = Normalize(mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32 [N, C, size, size]."""
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator, images.device)
        flip = (torch.rand(n, generator=generator, device=images.device) < 0.5) if self.hflip else None
        x = self.normalize(images)
        return crop_resize(x, boxes, self.size, flip)


class EvalTransform:
    """Evaluation: no randomness; normalise (images in memory are already at the model's size)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size, self.mean, self.std = size, mean, std
        self.normalize = Normalize(mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.normalize(images)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x
