"""Ridge from tokens to tokens: one linear map shared by every token position, each position centred.

The token-level separability scheme (METHOD.md section 4) regresses, for every pair, the T tokens of
the evaluated encoder (cls + the visible patches) onto the reference's tokens of a clean source at the
same positions. One map serves all positions, as the branch maps of an i-MAE do. After masking, a
token slot holds a different patch in each image, so tokens are centred by the mean of the fit pairs
at their *position* (``pos``: 0 for cls, 1 + patch index otherwise), never by slot. Without this,
position embeddings alone would let an untrained encoder "predict" most of the target variance.

Scores are kept per test pair: ``sse`` (squared error summed over the pair's tokens and target
dimensions) and ``sst`` (squared distance of the target tokens from the fit pairs' position means).
R^2 = 1 - sum(sse) / sum(sst): variance-weighted over dimensions, 0 for a predictor that knows only the
position. Per-pair sums let :mod:`imae.eval.bootstrap` resample pairs without refitting.

Shapes: P pairs, T tokens per pair, D predictor width, E target width; all algebra in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imae.eval.ridge import choose_penalty, ridge_from_gram

CHUNK = 512  # pairs per block of the cross-product sums


@dataclass
class PairErrors:
    """Per-test-pair error sums of one predictor against one target group."""

    sse: torch.Tensor  # [T_test] float64
    sst: torch.Tensor  # [T_test] float64
    penalty: float | None = None  # relative ridge penalty chosen on the validation pairs (None: nothing fitted)
    val_r2: float | None = None

    @property
    def r2(self) -> float:
        return float(1.0 - self.sse.sum() / self.sst.sum().clamp_min(1e-300))


def position_means(x: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, positions: int) -> torch.Tensor:
    """Mean of x [P, T, D] over the tokens of pairs ``rows`` at each position -> [positions, D] (0 where unseen)."""
    xs, ps = x[rows].reshape(-1, x.shape[-1]).double(), pos[rows].reshape(-1)
    sums = torch.zeros(positions, x.shape[-1], dtype=torch.float64).index_add_(0, ps, xs)
    counts = torch.bincount(ps, minlength=positions).clamp_min(1).double()
    return sums / counts[:, None]


def _centred(x: torch.Tensor, pos: torch.Tensor, mean: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Tokens of pairs ``rows`` minus their position's mean, flattened to [len(rows) * T, D] float64."""
    return (x[rows].double() - mean[pos[rows]]).reshape(-1, x.shape[-1])


def _blocks(rows: torch.Tensor):
    for start in range(0, rows.numel(), CHUNK):
        yield rows[start:start + CHUNK]


def _cross(x, y, pos, mx, my, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred sums over the tokens of ``rows``: X^T X [D, D], X^T Y [D, E], |Y|^2 per column [E]."""
    d, e = x.shape[-1], y.shape[-1]
    xtx = torch.zeros(d, d, dtype=torch.float64)
    xty = torch.zeros(d, e, dtype=torch.float64)
    y2 = torch.zeros(e, dtype=torch.float64)
    for b in _blocks(rows):
        xc, yc = _centred(x, pos, mx, b), _centred(y, pos, my, b)
        xtx += xc.T @ xc
        xty += xc.T @ yc
        y2 += (yc**2).sum(0)
    return xtx, xty, y2


def fit_tokens(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, fit_rows: torch.Tensor, val_rows: torch.Tensor,
               test_rows: torch.Tensor, groups: dict[str, slice], penalties: list[float]) -> dict[str, PairErrors]:
    """Ridge from x [P, T, D] to y [P, T, E] (tokens at positions ``pos`` [P, T]), one penalty per target group.

    Fitted on the pairs ``fit_rows``, penalty chosen on ``val_rows``, errors kept per pair of ``test_rows``."""
    positions = int(pos.max()) + 1
    mx, my = position_means(x, pos, fit_rows, positions), position_means(y, pos, fit_rows, positions)
    xtx, xty, _ = _cross(x, y, pos, mx, my, fit_rows)
    fit = ridge_from_gram(xtx, xty)
    vxx, vxy, vy2 = _cross(x, y, pos, mx, my, val_rows)
    v = fit.eigvecs
    ptp, pty = v.T @ vxx @ v, v.T @ vxy
    choice = {name: choose_penalty(fit, ptp, pty[:, cols], float(vy2[cols].sum()), float(vy2[cols].sum()),
                                   penalties, cols) for name, cols in groups.items()}
    maps = {name: fit.weights(c.penalty, groups[name])[0] for name, c in choice.items()}
    errors = _test_errors(x, y, pos, mx, my, test_rows, maps, groups)
    return {name: PairErrors(*errors[name], choice[name].penalty, choice[name].val_r2) for name in groups}


def _test_errors(x, y, pos, mx, my, rows, maps: dict[str, torch.Tensor],
                 groups: dict[str, slice]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per test pair of ``rows`` and target group: (sse [T_test], sst [T_test]) of the group's map [D, E_group];
    each block of tokens is centred once for all groups."""
    parts: dict[str, tuple[list, list]] = {name: ([], []) for name in groups}
    t = x.shape[1]
    for b in _blocks(rows):
        xc, ys = _centred(x, pos, mx, b), _centred(y, pos, my, b)
        for name, cols in groups.items():
            yc = ys[:, cols].contiguous()
            err = yc - xc @ maps[name]
            parts[name][0].append((err**2).view(b.numel(), t, -1).sum((1, 2)))
            parts[name][1].append((yc**2).view(b.numel(), t, -1).sum((1, 2)))
    return {name: (torch.cat(sse), torch.cat(sst)) for name, (sse, sst) in parts.items()}


def direct_errors(pred: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, fit_rows: torch.Tensor,
                  test_rows: torch.Tensor) -> PairErrors:
    """Errors of predictions made without fitting anything (an i-MAE's own branch maps): pred, y [P, T, E].

    sse is the plain squared error; sst is measured from the fit pairs' position means, as for a ridge."""
    my = position_means(y, pos, fit_rows, int(pos.max()) + 1)
    t = y.shape[1]
    diff = (pred[test_rows].double() - y[test_rows].double()) ** 2
    yc = (y[test_rows].double() - my[pos[test_rows]]) ** 2
    return PairErrors(diff.view(test_rows.numel(), t, -1).sum((1, 2)), yc.view(test_rows.numel(), t, -1).sum((1, 2)))

