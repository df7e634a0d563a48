"""Linear probe and kNN: high on a planted separable set, chance on random labels; LARS recipe trains."""

from __future__ import annotations

import torch

from eval_fixtures import planted_features
from imae.eval.config import LinearProbeConfig
from imae.eval.knn import knn_accuracy, knn_predict
from imae.eval.linear import fit_cached, predict, topk_accuracy, train_head


def _split(x, y, n_fit):
    return x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]


def test_linear_probe_separates_planted_classes_and_is_at_chance_on_random_labels():
    x, y = planted_features(n=800, classes=4)
    xf, yf, xt, yt = _split(x, y, 600)
    fit = fit_cached(xf, yf, 4, LinearProbeConfig())
    assert topk_accuracy(predict(fit.head, xt)[:, 0], yt) > 0.98
    g = torch.Generator().manual_seed(5)
    random_labels = torch.randint(0, 4, (800,), generator=g)
    fit = fit_cached(xf, random_labels[:600], 4, LinearProbeConfig())
    acc = topk_accuracy(predict(fit.head, xt)[:, 0], random_labels[600:])
    assert 0.15 < acc < 0.36  # chance is 0.25 (200 test samples)


def test_linear_probe_head_is_batchnorm_without_affine_plus_linear_and_fits_two_outputs():
    x, y = planted_features(n=400, classes=3)
    y2 = torch.stack([y, (y + 1) % 3], dim=1)  # the second output is a relabelling
    fit = fit_cached(x, y2, 3, LinearProbeConfig())
    bn = fit.head.bn
    assert not bn.affine and torch.allclose(bn.running_mean, x.mean(0), atol=1e-5)
    logits = predict(fit.head, x)
    assert logits.shape == (400, 2, 3)
    assert topk_accuracy(logits[:, 0], y) > 0.98 and topk_accuracy(logits[:, 1], y2[:, 1]) > 0.98


def test_linear_probe_is_deterministic():
    x, y = planted_features(n=300, classes=5, spread=1.5)
    a = fit_cached(x, y, 5, LinearProbeConfig(), seed=3).head.fc.weight
    b = fit_cached(x, y, 5, LinearProbeConfig(), seed=3).head.fc.weight
    assert torch.equal(a, b)


def test_knn_on_planted_clusters_and_random_labels():
    x, y = planted_features(n=800, classes=4)
    xf, yf, xt, yt = _split(x, y, 600)
    assert knn_accuracy(xf, yf, xt, yt, 4)["top1"] > 0.98
    g = torch.Generator().manual_seed(7)
    r = torch.randint(0, 4, (800,), generator=g)
    acc = knn_accuracy(xf, r[:600], xt, r[600:], 4)["top1"]
    assert 0.15 < acc < 0.36


def test_knn_votes_are_temperature_weighted_cosine():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.05]])
    scores = knn_predict(bank, labels, q, 2, k=3, temperature=0.5)
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    w = (cos / 0.5).exp()[0]
    assert torch.allclose(scores[0], torch.stack([w[0], w[1] + w[2]]), atol=1e-6)
    assert knn_predict(bank, labels, q, 2, k=1)[0].argmax() == 0  # nearest alone: class 0


def test_lars_recipe_lowers_the_training_loss():
    x, y = planted_features(n=512, classes=4, spread=1.0)
    # LARS moves a matrix by ~lr * 0.001 * |w| per step: a small problem needs a large lr (MAE: 6.4)
    cfg = LinearProbeConfig(epochs=30, warmup_epochs=2, blr=20.0)

    def batches(epoch):
        order = torch.randperm(512, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 512, 128):
            idx = order[i:i + 128]
            yield x[idx], y[idx].view(-1, 1)

    fit = train_head(batches, 4, 16, 4, 1, cfg, batch_size=128, show_progress=False)
    assert fit.epoch_loss[-1] < 0.7 * fit.epoch_loss[0]


def test_lars_step_scales_matrix_updates_by_the_trust_ratio_and_leaves_biases_plain():
    from imae.eval.lars import LARS

    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    w.grad = torch.ones(2, 2)
    b.grad = torch.ones(2)
    opt.step()
    d = torch.ones(2, 2) + 0.1 * 2.0  # gradient + weight decay
    q = 0.01 * torch.norm(torch.full((2, 2), 2.0)) / torch.norm(d)
    assert torch.allclose(w.detach(), torch.full((2, 2), 2.0) - 0.5 * q * d)
    assert torch.allclose(b.detach(), torch.full((2,), -0.5))
