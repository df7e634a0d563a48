"""The across-seed statistics the study scripts share."""

from __future__ import annotations

import statistics


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def t_half_width(xs: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of ``xs`` (at least two values)."""
    return t95(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
