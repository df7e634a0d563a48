"""Paired bootstrap over test items: confidence intervals of scores and of differences between models.

One seeded table of resampling counts ``C`` [B, n] (how often each of the n test items is drawn in each
of B resamples) serves every score computed on the same items. Because two models evaluated on
identical items share ``C``, the draws of their difference are paired. Scores are ratios of sums
(R^2 = 1 - sum(sse) / sum(sst)) or means (accuracy), so a resample is one matrix product, never a refit:
the ridge maps and heads stay fixed, and the interval covers the variation of the test items.

Intervals are percentile intervals at ``level`` (default 95%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Resampler:
    """B resamples of n test items; ``counts`` [B, n] float64."""

    counts: torch.Tensor
    level: float = 0.95

    @classmethod
    def draw(cls, n: int, draws: int = 1000, seed: int = 0, level: float = 0.95) -> Resampler:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(n, (draws, n), generator=g) if n else torch.zeros(draws, 0, dtype=torch.long)
        ones = torch.ones_like(idx, dtype=torch.float64)
        counts = torch.zeros(draws, n, dtype=torch.float64).scatter_add_(1, idx, ones)
        return cls(counts, level)

    @property
    def n(self) -> int:
        return int(self.counts.shape[1])

    def interval(self, draws: torch.Tensor) -> list[float | None]:
        """Percentile interval [lo, hi] of the finite draws [B]."""
        draws = draws[torch.isfinite(draws)]
        if draws.numel() == 0:
            return [None, None]
        tail = (1.0 - self.level) / 2
        q = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], dtype=draws.dtype))
        return [float(q[0]), float(q[1])]

    def _c(self, keep: torch.Tensor | None) -> torch.Tensor:
        return self.counts if keep is None else self.counts[:, keep]

    def r2_draws(self, sse: torch.Tensor, sst: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Draws [B] of R^2 = 1 - sum(sse) / sum(sst) over the items ``keep`` (a bool mask [n], or all)."""
        c = self._c(keep)
        sse = sse.double() if keep is None else sse.double()[keep]
        sst = sst.double() if keep is None else sst.double()[keep]
        return 1.0 - (c @ sse) / (c @ sst)

    def mean_draws(self, values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Draws [B] of the mean of per-item values [n] (e.g. 0/1 correctness) over the items ``keep``."""
        c = self._c(keep)
        v = values.double() if keep is None else values.double()[keep]
        return (c @ v) / c.sum(1)


def score(point: float, draws: torch.Tensor, rs: Resampler, n: int) -> dict[str, object]:
    """``{"value", "ci": [lo, hi], "n"}`` of one score."""
    return {"value": point, "ci": rs.interval(draws), "n": n}
