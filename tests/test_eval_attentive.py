"""The attentive probe: it reads a label the cls token lacks, it is at least the cls linear probe on real
CIFAR-10 features, no test image reaches its hyper-parameter choice, and the commands report it beside the
linear probe."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from eval_fixtures import ONE_EPOCH, fast_sets
from imae.cli import main
from imae.config.evaluate import EvalConfig, EvalDataConfig
from imae.eval import attentive
from imae.eval.attentive import attentive_probe, choose_setting, extract_tokens
from imae.eval.eval_split import load_eval_split
from imae.eval.probe_heads import fit_probe, predict, topk_accuracy
from imae.eval.subject import load_subject


def _cfg(**probe) -> EvalConfig:
    cfg = EvalConfig()
    for k, v in probe.items():
        setattr(cfg.probe, k, v)
    cfg.probe.head = "attentive"
    return cfg.validate()


def planted_tokens(n: int, seed: int, where: int = 5, tokens: int = 17, dim: int = 16, classes: int = 4):
    """tokens [n, T, D]: noise everywhere, a position code on every token, and the class centre in token
    ``where`` only (the cls token, 0, carries nothing); labels [n]."""
    g = torch.Generator().manual_seed(1000)  # the same centres and position codes for every split
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1) * 6
    codes = torch.randn(tokens, dim, generator=g) * 2
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, tokens, dim, generator=g) + codes
    x[:, where] += centres[y]
    return x, y


def test_the_attentive_probe_reads_a_label_that_lives_in_one_patch_token_where_the_cls_probe_cannot():
    xtr, ytr = planted_tokens(600, seed=0)
    xte, yte = planted_tokens(400, seed=1)
    cfg = _cfg()
    entry, hits = attentive_probe(xtr, ytr, xte, yte, 4, cfg, device="cpu")
    assert entry["top1"] > 0.9 and hits.float().mean().item() == pytest.approx(entry["top1"])
    assert entry["rule"] == attentive.CHOSEN and len(entry["selection"]["grid"]) == 2
    fit, _ = fit_probe(xtr[:, 0], ytr, 4, cfg.linprobe, seed=0)
    cls_top1 = topk_accuracy(predict(fit.head, xte[:, 0])[:, 0], yte)
    assert cls_top1 < 0.4  # chance is 0.25


def test_the_attention_from_token_statistics_is_layer_norm_then_dot_product_for_several_queries():
    import math

    g = torch.Generator().manual_seed(0)
    tokens = (torch.randn(40, 17, 32, generator=g) * 2 + 0.5).half()  # float16, as cached
    pool = attentive.AttentivePool(32, 5, queries=3)
    with torch.no_grad():
        pool.queries.normal_(generator=g)
    t = tokens.float()
    normed = torch.nn.functional.layer_norm(t, (32,))  # the head's definition: LN without affine, then q
    expected = torch.softmax(normed @ pool.queries.T / math.sqrt(32), dim=1).transpose(1, 2)  # [N, Q, T]
    given = attentive.token_stats(tokens, batch_size=16)  # chunked, as the training computes them once
    for weights in (pool.attention(tokens), pool.attention(tokens, given)):
        assert weights.shape == (40, 3, 17)
        torch.testing.assert_close(weights, expected, rtol=0, atol=1e-5)
    assert torch.equal(given, attentive.token_stats(tokens))  # chunking changes nothing
    pooled = pool.pooled(tokens)
    assert torch.allclose(pooled[:, 32:].view(40, 3, 32), expected @ t, atol=1e-5)


def test_settings_trained_side_by_side_are_bit_for_bit_the_settings_trained_alone():
    x, y = planted_tokens(90, seed=0)
    p = _cfg(epochs=2).probe
    together = attentive.train_queries_many(x, y, 4, p, [(1e-2, 1e-4), (1e-1, 0.0)], seed=3)
    for pool, (lr, wd) in zip(together, [(1e-2, 1e-4), (1e-1, 0.0)]):
        alone = attentive.train_queries(x, y, 4, p, lr=lr, weight_decay=wd, seed=3)
        for a, b in zip(pool.state_dict().values(), alone.state_dict().values()):
            assert torch.equal(a, b)
    assert not torch.equal(together[0].queries, together[1].queries)


def test_no_test_image_reaches_the_choice_of_the_setting(monkeypatch):
    """Every token row carries its image's id (train: 0..N-1, test: 10,000 + j): the queries trained and the
    tokens pooled while the setting is chosen are training rows only (queries: the fit rows; pooled: the fit
    rows, then the validation rows); test rows are only pooled to be scored, after the choice."""
    xtr, ytr = planted_tokens(200, seed=0)
    xte, yte = planted_tokens(80, seed=1)
    xtr[:, 1, 0], xte[:, 1, 0] = torch.arange(200).float(), 10_000 + torch.arange(80).float()
    calls = []
    real_train, real_pool = attentive.train_queries_many, attentive.pool_tokens

    def ids(x):
        return set(x[:, 1, 0].long().tolist())

    monkeypatch.setattr(attentive, "train_queries_many",
                        lambda x, *a, **k: calls.append(("train", ids(x))) or real_train(x, *a, **k))
    monkeypatch.setattr(attentive, "pool_tokens",
                        lambda pool, x, *a, **k: calls.append(("pool", ids(x))) or real_pool(pool, x, *a, **k))
    cfg = _cfg(epochs=2)
    chosen = choose_setting(xtr, ytr, 4, cfg, seed=0)
    calls.clear()
    chosen_entry, chosen_hits = attentive_probe(xtr, ytr, xte, yte, 4, cfg, device="cpu")
    train_ids, test_ids = set(range(200)), set(range(10_000, 10_080))
    fit_ids, val_ids = set(chosen["fit_index"].tolist()), set(chosen["val_index"].tolist())
    assert fit_ids.isdisjoint(val_ids) and fit_ids | val_ids == train_ids
    settings = len(cfg.probe.lr_grid) * len(cfg.probe.weight_decay_grid)
    # every setting's queries trained on the fit part (side by side), each pooling the training rows only for
    # the l2 choice (fit part) and its scoring (validation part); the chosen setting's queries and pooled rows
    # are kept for the head's refit, and only then the test rows are pooled, to be scored
    assert calls == [("train", fit_ids)] + [("pool", train_ids)] * settings + [("pool", test_ids)]
    calls.clear()  # the same setting given: its queries are trained on the same fit share, to the same probe
    given = {k: chosen[k] for k in ("lr", "weight_decay", "l2")}
    given_entry, given_hits = attentive_probe(xtr, ytr, xte, yte, 4, cfg, device="cpu", setting=given)
    assert calls == [("train", fit_ids), ("pool", train_ids), ("pool", test_ids)]
    assert torch.equal(given_hits, chosen_hits) and given_entry["top1"] == chosen_entry["top1"]


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar10_dir):
    """A tiny MAE pre-trained for one epoch on 200 real CIFAR-10 images."""
    from imae.engine.train import pretrain

    root = tmp_path_factory.mktemp("attentive-cifar")
    cfg = tiny_config(root / "mae", preset="cifar10-mae-tiny",
                      **{"data.path": str(cifar10_dir), "data.max_per_class": 20, "model.depth": 2, **ONE_EPOCH})
    return pretrain(cfg)


def test_on_real_cifar10_features_the_attentive_probe_is_at_least_the_cls_linear_probe_on_validation(cifar_run,
                                                                                                    cifar10_dir):
    subject = load_subject(cifar_run)
    train = load_eval_split(EvalDataConfig(dataset="cifar10", path=str(cifar10_dir), train_per_class=60), "train",
                            32, progress=False)
    cfg = _cfg()
    tokens = extract_tokens(subject.model, train, subject.fingerprint, layer=subject.model.arch.depth,
                            show_progress=False)
    assert tokens.dtype == torch.float16 and tokens.shape[1] == 1 + subject.model.arch.num_patches
    chosen = choose_setting(tokens, train.labels, 10, cfg, seed=0)
    _, penalty = fit_probe(tokens[:, 0].float(), train.labels, 10, cfg.linprobe, seed=0)  # the cls linear probe
    linear_val = penalty["l2_selection"]["best_val_top1"]  # on the same validation images
    assert penalty["l2_selection"]["val_images"] == chosen["selection"]["val_images"]
    attentive_val = max(g["val_top1"] for g in chosen["selection"]["grid"])
    assert attentive_val >= linear_val, (attentive_val, linear_val)


def _json(capsys) -> dict:
    return json.loads(open(capsys.readouterr().out.strip().splitlines()[-1]).read())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from imae.engine.train import pretrain

    return pretrain(tiny_config(tmp_path_factory.mktemp("attentive-digits") / "mae", **ONE_EPOCH))


def test_linprobe_and_semantics_report_the_attentive_probe_beside_the_linear_one(digits_run, tmp_path, capsys):
    main(["linprobe", str(digits_run), "--output-dir", str(tmp_path / "plain"), *fast_sets()])
    plain = _json(capsys)["results"]
    main(["linprobe", str(digits_run), "--head", "attentive", "--output-dir", str(tmp_path / "att"),
          *fast_sets(**{"probe.epochs": 3})])
    both = _json(capsys)["results"]
    assert "attentive" not in plain and both["top1"] == plain["top1"]  # the linear probe is as it was
    a = both["attentive"]
    assert a["head"] == "attentive" and 0 <= a["top1"] <= 1 and a["rule"] == attentive.CHOSEN
    main(["semantics", str(digits_run), "--head", "attentive", "--output-dir", str(tmp_path / "sem"),
          *fast_sets(**{"probe.epochs": 3, "semantics.separability": False})])
    sem = _json(capsys)["results"]
    assert sem["attentive"]["top1"] == a["top1"] and sem["linprobe"]["top1"] == plain["top1"]


def test_compare_gives_both_models_one_attentive_setting(digits_run, tmp_path, capsys):
    main(["compare", str(digits_run), str(digits_run), "--reference", str(digits_run), "--head", "attentive",
          "--output-dir", str(tmp_path),
          *fast_sets(**{"probe.epochs": 2, "probe.lr": 0.01, "probe.weight_decay": 0.0001})])
    m = _json(capsys)["results"]["metrics"]["attentive"]
    assert m["diff"] == 0 and m["rule"] == attentive.GIVEN and m["lr"] == 0.01 and m["l2"] == 1e-4
