"""Closed-form ridge regression with many penalties for the price of one (validation R^2 is variance-weighted).

``fit_ridge`` centres X [N, D] and Y [N, T] (the intercept is not penalised) and diagonalises
``Xc^T Xc = V diag(s) V^T`` once, so the solution for any penalty is
``W(lam) = V diag(1 / (s + lam)) V^T Xc^T Yc``. Penalties are given relative to the mean eigenvalue
(``lam = rel * trace(Xc^T Xc) / D``), which makes one grid fit features of any scale.

Validation error for every penalty needs no prediction matrix: with ``P = (X_val - mu_x) V``,
``A = V^T Xc^T Yc`` and ``f = 1 / (s + lam)``,
``SSE(lam) = |Yv|^2 - 2 f . rowsum(P^T Yv * A) + f^T (P^T P * A A^T) f``
(Yv centred by the fit mean), i.e. O(D^2) per penalty once ``P^T Yv`` and ``A A^T`` are formed.
All algebra runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RidgeFit:
    """A ridge problem diagonalised once; solutions for any penalty follow cheaply."""

    mean_x: torch.Tensor  # [D]
    mean_y: torch.Tensor  # [T]
    eigvals: torch.Tensor  # [D] eigenvalues of Xc^T Xc (ascending)
    eigvecs: torch.Tensor  # [D, D]
    xty_rot: torch.Tensor  # [D, T] = V^T Xc^T Yc

    @property
    def scale(self) -> float:
        """The mean eigenvalue: relative penalties are multiples of it."""
        return float(self.eigvals.clamp_min(0).mean().clamp_min(1e-12))

    def weights(self, rel_penalty: float, cols: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [D, T], b [T]) for penalty ``rel_penalty * scale`` (only the target columns ``cols`` when
        given): predictions are ``x @ W + b``."""
        cols = cols if cols is not None else slice(None)
        f = 1.0 / (self.eigvals.clamp_min(0) + rel_penalty * self.scale)
        w = self.eigvecs @ (f[:, None] * self.xty_rot[:, cols])
        return w, self.mean_y[cols] - self.mean_x @ w

    def predict(self, x: torch.Tensor, rel_penalty: float, cols: slice | None = None) -> torch.Tensor:
        w, b = self.weights(rel_penalty, cols)
        return x.double() @ w + b


def fit_ridge(x: torch.Tensor, y: torch.Tensor) -> RidgeFit:
    """x [N, D], y [N, T] -> the diagonalised problem (float64)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    s, v = torch.linalg.eigh(xc.T @ xc)
    return RidgeFit(mx, my, s, v, v.T @ (xc.T @ yc))


@dataclass
class PenaltyChoice:
    penalty: float  # relative penalty with the best validation R^2
    val_r2: float
    curve: list[float]  # validation R^2 for every penalty of the grid


def ridge_from_gram(xtx: torch.Tensor, xty: torch.Tensor) -> RidgeFit:
    """A problem given by its centred cross-products ``Xc^T Xc`` [D, D] and ``Xc^T Yc`` [D, T] (float64);
    the caller has centred X and Y, so the fit has no intercept of its own."""
    s, v = torch.linalg.eigh(xtx.double())
    d, t = xty.shape
    return RidgeFit(xtx.new_zeros(d, dtype=torch.float64), xtx.new_zeros(t, dtype=torch.float64), s, v,
                    v.T @ xty.double())


def choose_penalty(fit: RidgeFit, ptp: torch.Tensor, pty: torch.Tensor, y2: float, sst: float,
                   penalties: list[float], cols: slice | None = None) -> PenaltyChoice:
    """The relative penalty of the grid with the best validation R^2 = 1 - SSE / ``sst``.

    With validation predictors rotated into the fit's eigenbasis, ``P = (X_val - mu_x) V``, the inputs are
    ``ptp = P^T P`` [D, D], ``pty = P^T Yv`` [D, T_g] and ``y2 = |Yv|^2`` for the target columns ``cols``."""
    a = fit.xty_rot[:, cols if cols is not None else slice(None)]  # [D, T_g]
    cross = (pty * a).sum(1)  # [D]
    quad = ptp * (a @ a.T)  # [D, D]
    s = fit.eigvals.clamp_min(0)
    sst = max(float(sst), 1e-300)
    curve = []
    for rel in penalties:
        f = 1.0 / (s + rel * fit.scale)
        sse = y2 - 2 * (f * cross).sum() + f @ quad @ f
        curve.append(float(1.0 - sse / sst))
    best = max(range(len(penalties)), key=lambda i: curve[i])
    return PenaltyChoice(float(penalties[best]), curve[best], curve)
