"""Semantics-enhanced sampling: pick each sample's partner inside its mini-batch with P(same class) = p.

The partner supplies the dominant image; the sample itself is the subordinate. ``p`` may be a number in
[0, 1] (1: always the same class, the 2024 run; 0: never), ``"random"`` (uniform over the other samples
of the batch, about 1/C same-class) or ``"self"`` (no mixing partner: the image is paired with itself,
the "unmixed input" ablation). Batches for numeric ``p`` are built from same-class pairs
(:class:`~imae.data.loader.BatchPlan` with ``class_pairs``), so a same-class partner always exists.
"""

from __future__ import annotations

import torch

from imae.errors import ConfigError, short

SPECIAL = ("random", "self")


def parse_p(p: float | str, key: str = "imae.same_class_p") -> float | str:
    """Validate the same-class probability setting ``key``."""
    if isinstance(p, str):
        if p in SPECIAL:
            return p
        try:
            p = float(p)
        except ValueError:
            raise ConfigError(f"{key} must be a number in [0, 1], 'random' or 'self'; got {short(p)}") from None
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{key} must lie in [0, 1]; got {p}")
    return float(p)


def needs_labels(p: float | str) -> bool:
    return not isinstance(p, str)


def choose_partners(labels: torch.Tensor, p: float | str,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """labels: [N] -> (partner [N] indices into the batch, same [N] bool: partner has the same label).

    For numeric p, each sample independently wants a same-class partner with probability p and takes
    a uniformly random one of that kind (never itself); when the batch has none of the wanted kind, it
    takes one of the other kind (the realised rate is logged, so such batches show).
    """
    n = labels.shape[0]
    device = labels.device
    if p == "self":
        idx = torch.arange(n, device=device)
        return idx, torch.ones(n, dtype=torch.bool, device=device)
    others = ~torch.eye(n, dtype=torch.bool, device=device)
    if p == "random":
        allowed = others
    else:
        same = (labels[:, None] == labels[None, :]) & others
        diff = labels[:, None] != labels[None, :]
        want_same = torch.rand(n, generator=generator, device=device) < p
        allowed = torch.where(want_same[:, None], same, diff)
        # fall back to the other kind where the wanted kind is absent from the batch
        empty = ~allowed.any(1)
        allowed = torch.where(empty[:, None], others, allowed)
    scores = torch.rand(n, n, generator=generator, device=device).masked_fill(~allowed, -1.0)
    partner = scores.argmax(1)
    return partner, labels[partner] == labels
