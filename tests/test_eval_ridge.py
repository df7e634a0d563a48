"""Closed-form ridge: equal to a reference solve, recovers planted linear maps, penalty selection is exact."""

from __future__ import annotations

import numpy as np
import torch

from imae.eval.ridge import fit_ridge, r2_score, ridge_solve, select_penalties


def _data(n=300, d=12, t=5, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    w = torch.randn(d, t, generator=g, dtype=torch.float64)
    b = torch.randn(t, generator=g, dtype=torch.float64)
    return x, x @ w + b + noise * torch.randn(n, t, generator=g, dtype=torch.float64), w, b


def test_ridge_equals_numpy_lstsq_of_the_augmented_system():
    x, y, _, _ = _data(noise=0.5)
    rel = 0.3
    w, b = ridge_solve(x, y, rel)
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


def test_r2_is_variance_weighted_over_dimensions():
    y = torch.tensor([[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]])
    pred = y.clone()
    pred[:, 0] = 1.0  # dimension 0 (small variance) predicted by its mean: R^2 0 there
    expected = 1 - 2.0 / (2.0 + 200.0)
    assert abs(r2_score(y, pred) - expected) < 1e-12
