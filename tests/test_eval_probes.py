"""Linear probe and kNN: high on a planted separable set, chance on random labels; LARS recipe trains."""

from __future__ import annotations

import pytest
import torch

from eval_fixtures import planted_features
from imae.config.evaluate import LinearProbeConfig
from imae.eval import probe_heads
from imae.eval.knn import knn_accuracy, knn_predict
from imae.eval.probe_heads import fit_cached, predict, topk_accuracy, train_head


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


def test_lbfgs_probe_in_row_chunks_equals_the_one_piece_fit(monkeypatch):
    # ImageNet-sized caches are fitted in chunks of rows (labels as indices): the same minimiser

    x, y = planted_features(n=600, classes=5, spread=1.0)
    y2 = torch.stack([y, (y + 1) % 5], 1)  # two outputs, as the separability probe
    whole = fit_cached(x, y2, 5, LinearProbeConfig(), seed=1)
    monkeypatch.setattr(probe_heads, "ROW_CHUNK_ELEMENTS", 64 * 2 * 5)  # chunks of 64 rows
    chunked = fit_cached(x, y2, 5, LinearProbeConfig(), seed=1)
    assert torch.allclose(chunked.head.fc.weight, whole.head.fc.weight, atol=2e-3)  # L-BFGS tolerance
    assert chunked.epoch_loss[0] == pytest.approx(whole.epoch_loss[0], rel=1e-5)


def test_knn_over_a_chunked_bank_equals_the_whole_bank():
    # an ImageNet-sized bank is scored in chunks (the k best of each merged): the same votes as one chunk
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(1000, 16, generator=g), torch.randn(50, 16, generator=g)
    labels = torch.randint(0, 7, (1000,), generator=g)
    whole = knn_predict(bank, labels, q, 7, k=20, chunk=16)
    chunked = knn_predict(bank, labels, q, 7, k=20, chunk=16, bank_chunk=64)
    assert torch.allclose(chunked, whole, rtol=1e-6, atol=1e-6) and chunked.device.type == "cpu"
    assert knn_predict(bank, labels, q, 7, k=20, bank_chunk=7).shape == (50, 7)  # chunks smaller than k


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


# ----------------------------------------------------------------------------------------------
# the probe's l2: chosen on a validation share of the training split, never on the test split


def _cancelling_signal(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two features x1 = s + big nuisance, x2 = the nuisance: the class (sign of s) is read only by the large,
    cancelling weights x1 - x2, which a strong penalty forbids (it keeps roughly x1 alone)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    s = (2 * y - 1).float() * 0.3
    nuisance = 3.0 * torch.randn(n, generator=g)
    return torch.stack([s + nuisance, nuisance], dim=1), y


def test_l2_choice_is_weak_when_the_signal_needs_large_weights_and_strong_for_noise():
    from imae.eval.probe_heads import select_l2

    cfg = LinearProbeConfig()
    x, y = _cancelling_signal()
    weak = select_l2(x, y, 2, cfg)
    assert weak["l2"] <= 1e-2 and weak["best_val_top1"] > 0.95
    assert weak["val_top1"][-1] < 0.8  # the strongest penalty of the grid does hurt here
    assert weak["grid"] == sorted(cfg.l2_grid) and len(weak["val_top1"]) == len(cfg.l2_grid)
    assert weak["val_images"] == 60 and weak["fit_images"] == 340  # 15% of each class
    strong = 0
    for seed in range(8):  # no signal, many dimensions: 45 validation images, so a draw can fool the rule
        noise = torch.randn(300, 200, generator=torch.Generator().manual_seed(seed))
        strong += select_l2(noise, torch.arange(300) % 4, 4, cfg, seed=seed)["l2"] >= 1.0
    assert strong >= 6


def test_validation_split_is_seeded_stratified_and_disjoint():
    from imae.eval.probe_heads import validation_split

    y = torch.arange(103) % 5
    fit, val = validation_split(y, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 103
    assert torch.bincount(y[val], minlength=5).tolist() == [4, 4, 4, 4, 4]  # round(0.2 * 20 or 21)
    again, _ = validation_split(y, 0.2, seed=3)
    other, _ = validation_split(y, 0.2, seed=4)
    assert torch.equal(fit, again) and not torch.equal(fit, other)


def test_fixed_l2_skips_the_search_and_is_what_the_head_is_fitted_with(monkeypatch):

    seen = []
    real = probe_heads.fit_cached_many
    monkeypatch.setattr(probe_heads, "fit_cached_many", lambda *a, **k: seen.append(k.get("l2")) or real(*a, **k))
    x, y = _cancelling_signal(200)
    _, rec = probe_heads.fit_probe(x, y, 2, LinearProbeConfig(l2=0.5))
    assert rec == {"l2": 0.5, "l2_rule": "given", "l2_selection": None} and seen == [0.5]
    seen.clear()
    _, rec = probe_heads.fit_probe(x, y, 2, LinearProbeConfig())
    # one batched search over the grid, then the refit on all of x with the choice
    assert seen == [sorted(LinearProbeConfig().l2_grid), rec["l2"]] and rec["l2"] in rec["l2_selection"]["grid"]


def test_fit_cached_many_without_a_choice_uses_the_fixed_default():
    from imae.eval.probe_heads import DEFAULT_L2, fit_cached_many

    x, y = _cancelling_signal(200)
    cfg = LinearProbeConfig()
    assert cfg.l2 is None
    a = fit_cached_many([x], y, 2, cfg)[0].head.fc.weight
    b = fit_cached_many([x], y, 2, LinearProbeConfig(l2=DEFAULT_L2))[0].head.fc.weight
    c = fit_cached_many([x], y, 2, LinearProbeConfig(l2=1.0))[0].head.fc.weight
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_linprobe_command_chooses_l2_on_training_features_only(tmp_path_factory, monkeypatch):
    """Every feature row any probe fit sees (search and refit) is a training-split row; none is a test row."""
    import imae.eval.linprobe as linprobe
    from eval_fixtures import FAST, digits_runs
    from imae.eval.run import evaluate

    run = digits_runs(tmp_path_factory)["mae"]
    extracted, fitted = {}, []
    real_extract, real_fit = linprobe.extract_split, probe_heads.fit_cached_many

    def extract(*a, which, **k):
        out = real_extract(*a, which=which, **k)
        extracted[which] = out.pooled("cls")
        return out

    monkeypatch.setattr(linprobe, "extract_split", extract)
    monkeypatch.setattr(probe_heads, "fit_cached_many", lambda xs, *a, **k: fitted.extend(xs) or real_fit(xs, *a, **k))
    res = evaluate("linprobe", run, sets=[f"{k}={v}" for k, v in FAST.items()])["results"]
    train, test = extracted["training"], extracted["evaluation"]
    grid = sorted(float(v) for v in res["l2_selection"]["grid"])
    # the search (grid on the fit part), the refit, then the curve (grid on all training rows): all training rows
    assert len(fitted) == 2 * len(grid) + 1
    for x in fitted:
        rows_in_train = (x[:, None, :] == train[None]).all(-1).any(1)
        rows_in_test = (x[:, None, :] == test[None]).all(-1).any(1)
        assert bool(rows_in_train.all()) and not bool(rows_in_test.any())
    fit_images = res["l2_selection"]["fit_images"]
    assert [x.shape[0] for x in fitted] == [fit_images] * len(grid) + [len(train)] * (len(grid) + 1)
    assert res["l2"] in res["l2_selection"]["grid"] and res["train_images"] == len(train)
    assert res["l2_rule"] == "one_se_on_validation"
    curve = res["l2_curve"]
    assert curve["grid"] == grid and len(curve["top1"]) == len(grid)
    assert all(0.0 <= a <= 1.0 for a in curve["top1"])
    fitted.clear()
    fixed = evaluate("linprobe", run, sets=[f"{k}={v}" for k, v in FAST.items()] + ["linprobe.l2=0.03"])["results"]
    assert fixed["l2"] == 0.03 and fixed["l2_selection"] is None and fixed["l2_rule"] == "given"
    assert len(fitted) == 1 + len(grid)  # no search: the head, then the curve
    assert len(fixed["l2_curve"]["top1"]) == len(grid)


# ----------------------------------------------------------------------------------------------
# models are compared at one penalty fixed before looking at them; every grid point's accuracy is reported


def test_fit_probe_records_which_rule_chose_its_l2(monkeypatch):

    seen = []
    real = probe_heads.fit_cached_many
    monkeypatch.setattr(probe_heads, "fit_cached_many", lambda *a, **k: seen.append(k.get("l2")) or real(*a, **k))
    x, y = _cancelling_signal(200)
    rule = "shared: chosen on the reference's validation split"
    # an l2 from the caller overrides linprobe.l2 and skips the search
    fit, rec = probe_heads.fit_probe(x, y, 2, LinearProbeConfig(l2=0.5), l2=0.01, rule=rule)
    assert rec == {"l2": 0.01, "l2_rule": rule, "l2_selection": None} and seen == [0.01]
    same = fit_cached(x, y, 2, LinearProbeConfig(), l2=0.01).head.fc.weight
    assert torch.equal(fit.head.fc.weight, same)
    seen.clear()
    assert probe_heads.fit_probe(x, y, 2, LinearProbeConfig(l2=0.5))[1]["l2_rule"] == "given" and seen == [0.5]
    _, rec = probe_heads.fit_probe(x, y, 2, LinearProbeConfig())
    assert rec["l2_rule"] == "one_se_on_validation" and rec["l2_selection"] is not None
    with pytest.raises(ValueError):
        probe_heads.fit_probe(x, y, 2, LinearProbeConfig(), rule=rule)  # a rule with no penalty to describe


def test_accuracy_curve_is_the_top1_of_one_head_per_grid_point_on_all_training_rows():
    from imae.eval.probe_heads import accuracy_curve, curve_hits

    x, y = _cancelling_signal(600)
    xf, yf, xt, yt = _split(x, y, 400)
    cfg = LinearProbeConfig(l2_grid=[10.0, 1e-4, 1.0, 1e-2])  # unsorted on purpose
    curve = accuracy_curve(xf, yf, xt, yt, 2, cfg)
    assert curve["grid"] == [1e-4, 1e-2, 1.0, 10.0] and len(curve["top1"]) == 4
    for g, acc in zip(curve["grid"], curve["top1"]):
        alone = fit_cached(xf, yf, 2, cfg, l2=g)
        assert acc == pytest.approx(topk_accuracy(predict(alone.head, xt)[:, 0], yt), abs=1e-6)
    assert curve["top1"][0] > 0.95 and curve["top1"][-1] < 0.8  # the curve does move along the grid
    hits = curve_hits(xf, yf, xt, yt, 2, cfg)
    assert hits.shape == (4, 200) and hits.dtype == torch.bool
    assert hits.float().mean(1).tolist() == pytest.approx(curve["top1"], abs=1e-6)


def test_search_and_curve_share_one_batched_fit_chunked_by_batched_elements(monkeypatch):

    calls = []
    real = probe_heads.fit_cached_many
    monkeypatch.setattr(probe_heads, "fit_cached_many", lambda xs, *a, **k: calls.append(k["l2"]) or real(xs, *a, **k))
    x, y = _cancelling_signal(200)
    cfg = LinearProbeConfig(l2_grid=[1e-3, 1e-1, 1e-2])
    # two heads of all 200 rows (2 features) per batch, three of the 170-row fit part
    monkeypatch.setattr(probe_heads, "BATCHED_ELEMENTS", 3 * 170 * 2)
    probe_heads.accuracy_curve(x, y, x, y, 2, cfg)
    assert calls == [[1e-3, 1e-2], [1e-1]]
    calls.clear()
    probe_heads.select_l2(x, y, 2, cfg)
    assert calls == [[1e-3, 1e-2, 1e-1]]  # the fit part (85% of the rows) is smaller: one batch


def test_a_solo_grid_fits_each_head_as_the_refit_does():
    x, y = _cancelling_signal(300)
    cfg = LinearProbeConfig(l2_grid=[1e-4, 1e-2, 1.0], max_iter=200)
    solo = probe_heads.fit_grid(x, y, 2, cfg, probe_heads.l2_grid(cfg), solo=True)
    for v, head in zip(probe_heads.l2_grid(cfg), solo):
        alone = fit_cached(x, y, 2, cfg, l2=v)
        assert torch.equal(head.head.fc.weight, alone.head.fc.weight)  # bit for bit: the head fit_probe refits
        assert torch.equal(head.head.bn.running_mean, alone.head.bn.running_mean)
    picked = probe_heads.select_l2(x, y, 2, cfg, solo=True)
    fit_idx, val_idx = probe_heads.validation_split(y, cfg.l2_val_fraction, 0)
    alone = [topk_accuracy(predict(fit_cached(x[fit_idx], y[fit_idx], 2, cfg, l2=v).head, x[val_idx])[:, 0], y[val_idx])
             for v in probe_heads.l2_grid(cfg)]
    assert picked["val_top1"] == alone  # the search scores exactly the heads a refit on the fit part gives


def test_the_attentive_setting_search_fits_each_penalty_on_its_own(monkeypatch):
    from imae.config.evaluate import EvalConfig
    from imae.eval import attentive

    seen = []
    real = probe_heads.select_l2
    monkeypatch.setattr(attentive, "select_l2", lambda *a, **k: seen.append(k.get("solo")) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randn(120, 5, 8, generator=g), torch.arange(120) % 3
    cfg = EvalConfig()
    cfg.probe.epochs, cfg.linprobe.l2_grid = 1, [1e-3, 1.0]
    attentive.choose_setting(tokens, labels, 3, cfg)
    assert seen == [True] * (len(cfg.probe.lr_grid) * len(cfg.probe.weight_decay_grid))


def test_a_shared_l2_gives_nearly_identical_features_nearly_identical_accuracy():
    from imae.eval.probe_heads import fit_probe

    x, y = planted_features(n=3000, dim=32, classes=10, spread=2.0)
    xf, yf, xt, yt = _split(x, y, 2000)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(11)) * 1e-6
    xf2, xt2 = xf + noise[:2000], xt + noise[2000:]
    shared = 1e-2
    acc = []
    for a, b in ((xf, xt), (xf2, xt2)):
        fit, rec = fit_probe(a, yf, 10, LinearProbeConfig(), l2=shared, rule="shared")
        assert rec["l2"] == shared and rec["l2_rule"] == "shared"
        acc.append(topk_accuracy(predict(fit.head, b)[:, 0], yt))
    assert 0.3 < acc[0] < 0.99  # not a trivially perfect task
    assert abs(acc[0] - acc[1]) <= 0.002


def test_a_large_head_fit_shows_progress_and_a_small_one_stays_quiet(monkeypatch, capsys):

    x, y = planted_features(n=200, dim=8, classes=4)
    cfg = LinearProbeConfig(max_iter=20)
    probe_heads.fit_cached(x, y, 4, cfg, l2=1e-3)
    assert "L-BFGS" not in capsys.readouterr().err  # CIFAR-sized problems finish in seconds: no bar
    monkeypatch.setattr(probe_heads, "PROGRESS_MULTIPLIES", 0)  # as if it were 2,000 classes of ImageNet features
    probe_heads.fit_cached(x, y, 4, cfg, l2=1e-3)
    assert "linear head (L-BFGS loss evaluations)" in capsys.readouterr().err
