"""Closed-form ridge: equal to a reference solve, recovers planted linear maps, penalty selection is exact.
R^2 is scored by scikit-learn (variance-weighted), the independent reference."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import r2_score as sk_r2

from imae.eval.ridge import choose_penalty, fit_ridge


def r2_score(y: torch.Tensor, pred: torch.Tensor) -> float:
    return float(sk_r2(y.double().numpy(), pred.double().numpy(), multioutput="variance_weighted"))


def select_penalties(fit, x_val, y_val, penalties, groups):
    """Validation R^2 of every penalty from the fit's eigenbasis (choose_penalty's inputs), per target group."""
    p = (x_val.double() - fit.mean_x) @ fit.eigvecs
    yv = y_val.double() - fit.mean_y  # centred by the fit mean, as predictions are
    out = {}
    for name, cols in groups.items():
        yg = yv[:, cols]
        sst = ((yg - yg.mean(0)) ** 2).sum()
        out[name] = choose_penalty(fit, p.T @ p, p.T @ yg, float((yg**2).sum()), float(sst), penalties, cols)
    return out


def _data(n=300, d=12, t=5, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    w = torch.randn(d, t, generator=g, dtype=torch.float64)
    b = torch.randn(t, generator=g, dtype=torch.float64)
    return x, x @ w + b + noise * torch.randn(n, t, generator=g, dtype=torch.float64), w, b


def test_ridge_equals_numpy_lstsq_of_the_augmented_system():
    x, y, _, _ = _data(noise=0.5)
    rel = 0.3
    w, b = fit_ridge(x, y).weights(rel)
    # reference: centre (unpenalised intercept), then lstsq on [Xc; sqrt(lam) I] w = [Yc; 0]
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    lam = rel * np.linalg.eigvalsh(xc.T @ xc).mean()
    a = np.vstack([xc, np.sqrt(lam) * np.eye(x.shape[1])])
    rhs = np.vstack([yc, np.zeros((x.shape[1], y.shape[1]))])
    w_ref = np.linalg.lstsq(a, rhs, rcond=None)[0]
    b_ref = y.mean(0).numpy() - x.mean(0).numpy() @ w_ref
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-8, atol=1e-10)


def test_ridge_recovers_a_planted_linear_map_and_nothing_from_shuffled_targets():
    x, y, _, _ = _data(n=600)
    fit_x, fit_y, test_x, test_y = x[:400], y[:400], x[400:], y[400:]
    fit = fit_ridge(fit_x, fit_y)
    assert r2_score(test_y, fit.predict(test_x, 1e-8)) > 0.99
    shuffled = fit_y[torch.randperm(400, generator=torch.Generator().manual_seed(1))]
    r2 = r2_score(test_y, fit_ridge(fit_x, shuffled).predict(test_x, 1e-8))
    assert -0.1 < r2 < 0.05


def test_fast_validation_r2_matches_explicit_predictions_for_every_penalty_and_group():
    x, y, _, _ = _data(n=500, t=6, noise=2.0)
    fit = fit_ridge(x[:300], y[:300])
    penalties = [1e-4, 1e-2, 1.0, 10.0, 1e3]
    groups = {"a": slice(0, 2), "b": slice(2, 6)}
    choice = select_penalties(fit, x[300:], y[300:], penalties, groups)
    for name, cols in groups.items():
        explicit = [r2_score(y[300:, cols], fit.predict(x[300:], p, cols)) for p in penalties]
        np.testing.assert_allclose(choice[name].curve, explicit, rtol=1e-9, atol=1e-9)
        assert choice[name].penalty == penalties[int(np.argmax(explicit))]


def test_penalty_choice_prefers_strong_penalties_on_noise():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 40, generator=g)
    y = torch.randn(60, 3, generator=g)  # no relation: the best validation R^2 needs heavy shrinkage
    fit = fit_ridge(x[:30], y[:30])
    choice = select_penalties(fit, x[30:], y[30:], [1e-6, 1e-3, 1.0, 1e3], {"y": slice(0, 3)})
    assert choice["y"].penalty == 1e3
