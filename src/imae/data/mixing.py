"""Mixing two images: ``m = alpha * x_sub + (1 - alpha) * x_dom`` with the subordinate's weight alpha <= 0.5.

Alpha modes (METHOD.md section 2): ``fixed`` (one value), ``uniform`` (lo, hi), and ``beta`` (a, b), a
Beta draw folded to ``min(l, 1 - l)``. The 2024 release draws one ``l ~ Beta(1, 1)`` per batch; the
default here draws per sample (``per="batch"`` restores the release's behaviour).
"""

from __future__ import annotations

import torch

from imae.errors import ConfigError

ALPHA_MODES = ("fixed", "uniform", "beta")
ALPHA_MIN = 1e-4  # a folded Beta/uniform draw of exactly 0 would hide the subordinate completely


def check_alpha(alpha: float | torch.Tensor) -> None:
    """Raise ValueError unless every alpha lies in (0, 0.5] (one sync for a tensor)."""
    if isinstance(alpha, torch.Tensor):
        lo, hi = float(alpha.min()), float(alpha.max())
    else:
        lo = hi = float(alpha)
    if not (lo > 0.0 and hi <= 0.5):
        raise ValueError(f"alpha is the subordinate's weight and must lie in (0, 0.5]; got values in [{lo:g}, {hi:g}]")


def mix(x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """x_sub, x_dom: [N, C, H, W]; alpha: float or [N] -> alpha * x_sub + (1 - alpha) * x_dom."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(x_sub.dtype).view(-1, *([1] * (x_sub.ndim - 1)))
    return alpha * x_sub + (1 - alpha) * x_dom


class AlphaSampler:
    """Draws the subordinate weights of a batch: ``sample(n, generator, device) -> [n]`` in (0, 0.5]."""

    def __init__(self, mode: str = "beta", value: float = 0.3, uniform: tuple[float, float] = (0.0, 0.5),
                 beta: tuple[float, float] = (1.0, 1.0), per: str = "sample") -> None:
        if mode not in ALPHA_MODES:
            raise ConfigError(f"imae.alpha_mode must be one of {', '.join(ALPHA_MODES)}; got {mode!r}")
        if per not in ("sample", "batch"):
            raise ConfigError(f"imae.alpha_per must be 'sample' or 'batch'; got {per!r}")
        if mode == "fixed" and not 0.0 < value <= 0.5:
            raise ConfigError(f"imae.alpha must lie in (0, 0.5] (the subordinate's weight); got {value}")
        if mode == "uniform" and not 0.0 <= uniform[0] < uniform[1] <= 0.5:
            raise ConfigError(f"imae.alpha_uniform must satisfy 0 <= lo < hi <= 0.5; got {list(uniform)}")
        if mode == "beta" and not (beta[0] > 0 and beta[1] > 0):
            raise ConfigError(f"imae.alpha_beta parameters must be positive; got {list(beta)}")
        self.mode, self.value, self.uniform, self.beta, self.per = mode, value, uniform, beta, per

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """[n] alphas in (0, 0.5] (all equal with ``per='batch'``)."""
        m = 1 if self.per == "batch" else n
        if self.mode == "fixed":
            a = torch.full((m,), self.value, device=device)
        elif self.mode == "uniform":
            lo, hi = self.uniform
            a = lo + (hi - lo) * torch.rand(m, generator=generator, device=device)
        else:
            a = _beta(m, *self.beta, generator=generator, device=device)
            a = torch.minimum(a, 1 - a)
        a = a.clamp(ALPHA_MIN, 0.5)
        return a.expand(n).contiguous() if m == 1 else a


def _beta(n: int, a: float, b: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """Beta(a, b) draws, reproducible from ``generator`` (torch.distributions cannot take one), drawn on
    ``device`` as G_a / (G_a + G_b) of two Gamma draws: no host round trip per step."""
    if a == 1.0 and b == 1.0:
        return torch.rand(n, generator=generator, device=device)
    # float64: Gamma draws of small shapes underflow float32 to 0 (and 0 / 0 = nan)
    ga = torch._standard_gamma(torch.full((n,), a, dtype=torch.float64, device=device), generator=generator)
    gb = torch._standard_gamma(torch.full((n,), b, dtype=torch.float64, device=device), generator=generator)
    # both underflowed: Beta with tiny shapes is nearly Bernoulli, and the fold sends either end to 0
    return torch.nan_to_num(ga / (ga + gb), nan=0.0).float()
