"""Every frozen-encoder measure at any depth (``--layers``): the last block is today's numbers, a block's features
are that block's output with the final norm, and a planted encoder whose middle block carries the signal peaks
there."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from eval_fixtures import ONE_EPOCH, fast_sets
from imae.cli import main
from imae.config.evaluate import EvalConfig, EvalDataConfig
from imae.data.augment import normalize
from imae.data.mixing import mix
from imae.errors import ConfigError
from imae.eval.depth import check_spec, parse_layers
from imae.eval.eval_split import load_eval_split
from imae.eval.features import extract
from imae.eval.knn import run_knn
from imae.eval.linprobe import run_linprobe
from imae.eval.pairs import make_pairs
from imae.eval.separability import measure
from imae.eval.subject import Subject, load_subject
from imae.eval.tokens import encoder_layer_tokens, encoder_tokens, pair_noise, positions
from imae.models.mae import MAEArch, MaskedAutoencoder

DEPTH = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch digits MAE of three blocks (and a referee), trained once for this module."""
    from imae.engine.train import pretrain

    root = tmp_path_factory.mktemp("depth-runs")
    mae = pretrain(tiny_config(root / "mae", **{"model.depth": DEPTH, **ONE_EPOCH}))
    referee = pretrain(tiny_config(root / "referee", seed=1, **{"model.depth": DEPTH, **ONE_EPOCH}))
    return {"mae": mae, "referee": referee}


@pytest.fixture(scope="module")
def split():
    return load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=5), "eval", 16, progress=False)


def test_layer_lists_are_parsed_and_checked_against_the_depth():
    assert parse_layers("last", 12) == [12]
    assert parse_layers("all", 3) == [1, 2, 3]
    assert parse_layers("2,4,last", 12) == [2, 4, 12]
    assert parse_layers([4, "last", 4], 12) == [4, 12]
    assert check_spec(" 2, LAST ") == "2,last"
    for bad in ("0", "two", "", "all,2", True):
        with pytest.raises(ConfigError):
            check_spec(bad)
    with pytest.raises(ConfigError, match="has 3 blocks"):
        parse_layers("5", 3)


def _by_hand(model: MaskedAutoencoder, x: torch.Tensor, k: int) -> torch.Tensor:
    """Block k's output with the final norm, computed without encode_layers."""
    h = model.patch_embed(x) + model.pos_embed[:, 1:, :]
    h = torch.cat([(model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1), h], dim=1)
    for blk in list(model.blocks)[:k]:
        h = blk(h)
    return model.norm(h)


def test_a_layers_features_equal_the_output_of_block_k_computed_independently(run, split):
    subject = load_subject(run["mae"])
    model = subject.model.eval()
    feats = extract(model, split, subject.fingerprint, batch_size=16, show_progress=False, layers=[1, 2, DEPTH])
    x = normalize(split.data.images, split.data.mean, split.data.std)
    with torch.no_grad():
        for k in (1, 2, DEPTH):
            tokens = _by_hand(model, x, k)
            assert torch.allclose(feats[k].cls, tokens[:, 0], atol=1e-5)
            assert torch.allclose(feats[k].mean, tokens[:, 1:].mean(1), atol=1e-5)
        # the last block's features are the encoder's output, bit for bit: forward_features batch by batch, for
        # clean images and for mixtures (mixed after normalisation), as extracted before layers existed
        plain = extract(model, split, subject.fingerprint, batch_size=16, show_progress=False)
        assert torch.equal(plain.cls, feats[DEPTH].cls) and torch.equal(plain.mean, feats[DEPTH].mean)
        pairs = torch.stack([torch.arange(len(split)), torch.arange(len(split)).roll(1)], 1)
        mixed = extract(model, split, subject.fingerprint, pairs=pairs, alpha=0.3, batch_size=16,
                        show_progress=False)
        for got, inputs in ((plain, x), (mixed, mix(x[pairs[:, 0]], x[pairs[:, 1]], 0.3))):
            tokens = torch.cat([model.forward_features(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
            assert torch.equal(got.cls, tokens[:, 0]) and torch.equal(got.mean, tokens[:, 1:].mean(1))
        # masked tokens (separability's): block k of the visible patches, the last one equal to forward_encoder's
        noise = pair_noise(x.shape[0], model.arch.num_patches, 0)
        for ratio in (0.75, 0.0):
            pos = positions(noise, ratio)
            per = encoder_layer_tokens(model, x, noise, ratio, pos, [1, DEPTH])
            for a, b in zip(per[DEPTH], encoder_tokens(model, x, noise, ratio, pos)):
                assert torch.equal(a, b)
        per = encoder_layer_tokens(model, x, noise, 0.75, positions(noise, 0.75), [1, DEPTH])
        kept, _, _ = model.random_masking(model.embed_patches(x), 0.75, noise)
        h = torch.cat([(model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1), kept], dim=1)
        assert torch.allclose(per[1][0], model.norm(model.blocks[0](h)), atol=1e-5)


def test_each_layer_is_cached_under_its_own_key_and_the_last_under_the_outputs(run, split, tmp_path):
    from imae.eval.features import FeatureCache

    subject = load_subject(run["mae"])
    cache = FeatureCache(tmp_path / "features")
    plain = extract(subject.model, split, subject.fingerprint, batch_size=16, cache=cache, show_progress=False)
    assert len(list(cache.folder.glob("*.pt"))) == 1
    both = extract(subject.model, split, subject.fingerprint, batch_size=16, cache=cache, show_progress=False,
                   layers=[2, DEPTH])
    assert both[DEPTH].cached and not both[2].cached  # the output's entry is the last block's
    assert torch.equal(both[DEPTH].cls, plain.cls)
    assert len(list(cache.folder.glob("*.pt"))) == 2
    again = extract(subject.model, split, subject.fingerprint, batch_size=16, cache=cache, show_progress=False,
                    layers=[2])
    assert again[2].cached and torch.equal(again[2].cls, both[2].cls)


def _json(capsys) -> dict:
    path = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(open(path).read())


@pytest.mark.parametrize("command", ["knn", "linprobe", "semantics", "separability"])
def test_layers_last_equals_todays_numbers_and_every_layer_has_an_entry(command, run, tmp_path, capsys):
    ref = ["--reference", str(run["referee"])] if command in ("separability", "semantics") else []
    main([command, str(run["mae"]), *ref, "--output-dir", str(tmp_path / "plain"), *fast_sets()])
    plain = _json(capsys)
    main([command, str(run["mae"]), *ref, "--output-dir", str(tmp_path / "last"), "--layers", "last", *fast_sets()])
    last = _json(capsys)
    assert last["results"] == plain["results"]
    assert "layers" not in plain["results"]
    main([command, str(run["mae"]), *ref, "--output-dir", str(tmp_path / "all"), "--layers", "all", *fast_sets()])
    every = _json(capsys)["results"]
    assert sorted(every["layers"], key=int) == ["1", "2", "3"] and every["depth"] == DEPTH
    assert every["layers"][str(DEPTH)] == plain["results"]  # the last block's entry: the same numbers
    assert every["layer"] == DEPTH


def test_only_the_evaluated_encoders_fits_repeat_per_block_the_baselines_are_fitted_and_scored_once(
        run, split, monkeypatch):
    from imae.eval import separability

    heads, gains = [], []
    real_fit, real_gain = separability.fit_cached_many, separability.Scorer.gain
    monkeypatch.setattr(separability, "fit_cached_many",
                        lambda xs, *a, **k: heads.append((xs[0].shape[1], len(xs))) or real_fit(xs, *a, **k))
    monkeypatch.setattr(separability.Scorer, "gain", lambda self, m, p: gains.append(m) or real_gain(self, m, p))
    cfg = EvalConfig()
    cfg.features.layers, cfg.features.cache = "all", False
    cfg.separability.alphas, cfg.separability.mask_ratio, cfg.separability.bootstrap = [0.2, 0.4], 0.75, 20
    cfg.separability.unmasked = False  # one mask ratio
    cfg.validate()
    mae, referee = load_subject(run["mae"]), load_subject(run["referee"])
    m = measure(mae, referee, split, make_pairs(split.labels, same_class_p="random", seed=0), cfg,
                device=torch.device("cpu"), show_progress=False)
    width, pixels = mae.model.arch.embed_dim, 3 * cfg.separability.pixel_size ** 2
    # per block: one batch of heads over the alphas, one partner head; the pixels' heads once for all blocks
    assert sorted(heads) == sorted([(width, 2), (width, 1)] * DEPTH + [(pixels, 2)])
    baselines, groups = len(cfg.separability.baselines), 4  # {distill, encoder} x {sub, dom}
    alphas = len(cfg.separability.alphas)  # the encoder's gains at every block, each baseline's once
    assert len(gains) == groups * alphas * (DEPTH + baselines)
    assert m.at_layer(1).results["classification"]["baselines"]["pixels"] == \
        m.at_layer(3).results["classification"]["baselines"]["pixels"]  # every block reports the one fit


def test_a_block_that_does_not_exist_is_a_one_line_error(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["knn", str(run["mae"]), "--layers", "7", *fast_sets()])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imae: error:") and "has 3 blocks" in err and "\n" not in err


class MiddleCarries(MaskedAutoencoder):
    """A planted 3-block encoder: block ``signal_at``'s tokens are linear in the image (patch pixels times a
    random map; cls: a random map of all of them); the other blocks give noise that does not depend on the
    image."""

    def __init__(self, width: int = 24, signal_at: int = 2) -> None:
        super().__init__(MAEArch(img_size=16, patch_size=2, embed_dim=width, depth=3, num_heads=2,
                                 decoder_embed_dim=width, decoder_depth=1, decoder_num_heads=2))
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(12, width, generator=g) / 3
        self.cls_map = torch.randn(64 * width, width, generator=g) / 40
        self.signal_at = signal_at
        with torch.no_grad():  # the distillation space is the token space itself
            self.decoder_embed.weight.copy_(torch.eye(width))
            self.decoder_embed.bias.zero_()
        self.eval()

    def embed_patches(self, imgs):
        return self.patchify(imgs) @ self.proj

    def encode_layers(self, x, layers):
        cls = x.flatten(1) @ self.cls_map[:x.shape[1] * x.shape[2]]
        signal = torch.cat([cls.unsqueeze(1), x], dim=1)
        g = torch.Generator().manual_seed(x.shape[0] * 7 + x.shape[1])
        noise = torch.randn(signal.shape, generator=g)
        return {k: signal if k == self.signal_at else noise for k in layers}

    def encode_tokens(self, x):
        return self.encode_layers(x, [3])[3]


def _subject(model, label):
    s = Subject(path=label, run_dir=None, model=model, train_config=None, fingerprint=label, label=label, source=label)
    s.identity = lambda evaluated: {"label": label}
    return s


def test_a_planted_encoder_whose_middle_block_carries_the_signal_peaks_there():
    train = load_eval_split(EvalDataConfig(dataset="digits", train_per_class=30), "train", 16, progress=False)
    test = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=20), "eval", 16, progress=False)
    cfg = EvalConfig()
    cfg.features.layers = "all"
    cfg.features.cache = False
    cfg.separability.alphas = [0.3]
    cfg.separability.mask_ratio = 0.75
    cfg.separability.bootstrap = 50
    cfg.separability.baselines = []
    cfg.separability.classify = False
    cfg.validate()
    subject = _subject(MiddleCarries(), "planted")
    kw = dict(device=torch.device("cpu"), cache=None, show_progress=False)
    knn = run_knn(subject, train, test, cfg, **kw)["results"]["layers"]
    probe = run_linprobe(subject, train, test, cfg, **kw)["results"]["layers"]
    for per in (knn, probe):
        top1 = {k: v["top1"] for k, v in per.items()}
        assert max(top1, key=top1.get) == "2" and top1["2"] > 0.6 and top1["1"] < 0.35 and top1["3"] < 0.35
    pairs = make_pairs(test.labels, same_class_p="random", seed=0)
    referee = _subject(MiddleCarries(signal_at=3), "referee")  # its output carries the image
    m = measure(subject, referee, test, pairs, cfg, device=torch.device("cpu"), show_progress=False)
    gains = {k: m.at_layer(k).result.gain("sub", "0.3")["gain"] for k in (1, 2, 3)}
    assert max(gains, key=gains.get) == 2 and gains[2] > 0.05 and abs(gains[1]) < 0.05 and abs(gains[3]) < 0.05
    assert set(m.results["layers"]) == {"1", "2", "3"}


def test_compare_at_layers_gives_one_entry_per_block_and_the_last_is_todays(run, tmp_path, capsys):
    args = ["compare", str(run["referee"]), str(run["mae"]), "--reference", str(run["referee"]), *fast_sets()]
    main([*args, "--output-dir", str(tmp_path / "plain")])
    plain = _json(capsys)["results"]
    main([*args, "--output-dir", str(tmp_path / "depth"), "--layers", "2,last"])
    depth = _json(capsys)["results"]
    assert "layers" not in plain and sorted(depth["layers"]) == ["2", "3"]
    assert depth["layers"]["3"]["metrics"] == plain["metrics"] == depth["metrics"]
    assert depth["layers"]["2"]["metrics"]["linprobe"]["l2"] == plain["metrics"]["linprobe"]["l2"]  # one penalty


def test_the_report_draws_each_measure_against_depth_with_its_band(run, tmp_path, capsys):
    from imae.viz.depth_chart import depth_series, wilson
    from imae.viz.report import write_report

    main(["knn", str(run["mae"]), "--layers", "all", *fast_sets()])  # into the run's own eval/ folder
    record = _json(capsys)
    series = depth_series({"knn": record})
    pts = series["kNN top-1"]
    assert [p[0] for p in pts] == [1, 2, 3]
    n = record["data"]["eval_images"]
    for k, top1, lo, hi in pts:
        assert top1 == record["results"]["layers"][str(k)]["top1"] and (lo, hi) == wilson(top1, n) and lo <= top1 <= hi
    assert depth_series({"knn": {**record, "results": record["results"]["layers"]["3"]}}) == {}  # one layer: none
    page = write_report([run["mae"]], tmp_path / "report")["html"].read_text()
    assert "measures against depth" in page
