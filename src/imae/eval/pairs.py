"""Held-out image pairs for the separability schemes, fixed by a seed.

The evaluation split's images are shuffled (seeded) and cut into three disjoint parts, fit / validation /
test (``fractions``, default 60/20/20). Inside each part every image is the subordinate of one pair and
gets a dominant partner from the same part, drawn as in pre-training (``imae.data.pairing``: P(same
class) = p, or uniform), within blocks of 1024 images. No image of one part appears in another, so a
test pair shares no image with the pairs the regression was fitted on. Two checkpoints evaluated with
the same seed, data and settings are scored on identical pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imae.data.pairing import choose_partners
from imae.errors import DataError

PARTS = ("fit", "val", "test")
BLOCK = 1024


@dataclass
class PairSet:
    """P pairs of indices into the split: subordinate ``sub`` [P], dominant ``dom`` [P], ``part`` [P]
    (0 fit, 1 validation, 2 test) and ``same`` [P] (both images have the same known label)."""

    sub: torch.Tensor
    dom: torch.Tensor
    part: torch.Tensor
    same: torch.Tensor

    def __len__(self) -> int:
        return int(self.sub.shape[0])

    @property
    def index(self) -> torch.Tensor:
        """[P, 2]: (subordinate, dominant) per pair, the input of feature extraction."""
        return torch.stack([self.sub, self.dom], dim=1)

    def rows(self, part: str) -> torch.Tensor:
        return torch.nonzero(self.part == PARTS.index(part)).flatten()

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {p: int((self.part == i).sum()) for i, p in enumerate(PARTS)}
        out["same_class_rate"] = round(float(self.same.double().mean()), 6) if len(self) else 0.0
        return out


def make_pairs(labels: torch.Tensor, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
               same_class_p: float | str = "random", seed: int = 0, max_images: int | None = None) -> PairSet:
    """labels [N] (-1 where unknown) -> pairs over the N images (or a seeded subset of ``max_images``)."""
    labels = labels.cpu()
    known = bool((labels >= 0).all()) and labels.numel() > 0
    if not isinstance(same_class_p, str) and not known:
        raise DataError("same-class pairing needs class labels and this evaluation split has none; "
                        "use --set separability.same_class_p=random")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=g)
    if max_images is not None:
        order = order[:max_images]
    n = order.numel()
    sizes = [round(f * n) for f in fractions[:2]]
    sizes.append(n - sum(sizes))
    if min(sizes) < 2:
        raise DataError(f"separability needs at least 2 images in each of the fit/validation/test parts; "
                        f"{n} evaluation images give {sizes}; use more images (data.eval_per_class, "
                        f"separability.max_images) or other separability.fractions")
    subs, doms, parts = [], [], []
    for part, chunk in enumerate(torch.split(order, sizes)):
        # near-equal blocks of at most BLOCK images (never a block of one)
        for block in torch.tensor_split(chunk, -(-chunk.numel() // BLOCK)):
            partner, _ = choose_partners(labels[block], same_class_p, g)
            subs.append(block)
            doms.append(block[partner])
            parts.append(torch.full_like(block, part))
    sub, dom = torch.cat(subs), torch.cat(doms)
    same = (labels[sub] == labels[dom]) & (labels[sub] >= 0)
    return PairSet(sub, dom, torch.cat(parts), same)
