"""Held-out image pairs for the separability schemes, fixed by a seed.

The evaluation split's images are shuffled (seeded) and cut into three disjoint parts, fit / validation /
test (``fractions``). Inside each part the images are matched into **disjoint** pairs: every image is in at
most one pair, as the subordinate or as the dominant, so the test pairs are independent units and a
bootstrap over them resamples what it claims to. A part of n images gives n // 2 pairs.

Partners are drawn independently of class by default (``same_class_p="random"``: the shuffled images are
paired in order), so same-class and different-class pairs both occur at their natural rates and are
reported apart. A number ``p`` asks for P(same class) = p: each still unpaired image (in shuffled order)
becomes a subordinate and takes, with probability p, the next unpaired image of its class, otherwise an
unpaired image of another class (the class drawn in proportion to the images it has left); where the wanted
kind has run out it takes the other kind, so the realised rate (``same_class_rate``) can fall short of p.

No image of one part appears in another, so a test pair shares no image with the pairs the regression was
fitted on. Two checkpoints evaluated with the same seed, data and settings are scored on identical pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imae.errors import DataError

PARTS = ("fit", "val", "test")


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
        out["disjoint"] = True
        return out


def make_pairs(labels: torch.Tensor, fractions: tuple[float, float, float] = (0.4, 0.2, 0.4),
               same_class_p: float | str = "random", seed: int = 0, max_images: int | None = None) -> PairSet:
    """labels [N] (-1 where unknown) -> disjoint pairs over the N images (or a seeded subset of ``max_images``)."""
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
    if min(sizes) < 4:
        raise DataError(f"separability needs at least 4 images (2 disjoint pairs) in each of the fit/validation/test "
                        f"parts; {n} evaluation images give {sizes}; use more images (data.eval_per_class, "
                        f"separability.max_images) or other separability.fractions")
    subs, doms, parts = [], [], []
    for part, chunk in enumerate(torch.split(order, sizes)):
        if isinstance(same_class_p, str):  # class-independent: consecutive images of the shuffled order
            m = chunk.numel() // 2
            s, d = chunk[:2 * m:2], chunk[1:2 * m:2]
        else:
            s, d = _match(chunk, labels[chunk], float(same_class_p), g)
        subs.append(s)
        doms.append(d)
        parts.append(torch.full_like(s, part))
    sub, dom = torch.cat(subs), torch.cat(doms)
    same = (labels[sub] == labels[dom]) & (labels[sub] >= 0)
    return PairSet(sub, dom, torch.cat(parts), same)


def _match(images: torch.Tensor, labels: torch.Tensor, p: float,
           g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (sub, dom) pairs of ``images`` [n] (in their shuffled order) with P(same class) = p where the
    images left allow it."""
    classes = sorted(set(labels.tolist()))
    queues = {c: [int(i) for i in images[labels == c]] for c in classes}  # unpaired images per class, in order
    heads = dict.fromkeys(classes, 0)
    used: set[int] = set()
    left = {c: len(q) for c, q in queues.items()}
    want_same = (torch.rand(images.numel(), generator=g) < p).tolist()
    draws = torch.rand(images.numel(), generator=g).tolist()

    def take(c: int) -> int:
        q = queues[c]
        while q[heads[c]] in used:
            heads[c] += 1
        i = q[heads[c]]
        used.add(i)
        left[c] -= 1
        return i

    subs, doms = [], []
    for k, (i, c) in enumerate(zip(images.tolist(), labels.tolist())):
        if i in used:
            continue
        used.add(i)
        left[c] -= 1
        others = [o for o in classes if o != c and left[o] > 0]
        if not left[c] and not others:
            break  # the last image of the part stays unpaired
        same = (want_same[k] and left[c] > 0) or not others
        if same:
            partner = take(c)
        else:  # another class, chosen in proportion to the images it has left
            total = sum(left[o] for o in others)
            x, acc = draws[k] * total, 0
            for o in others:
                acc += left[o]
                if x < acc:
                    break
            partner = take(o)
        subs.append(i)
        doms.append(partner)
    return torch.tensor(subs, dtype=torch.long), torch.tensor(doms, dtype=torch.long)
