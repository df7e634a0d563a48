"""The separability instrument on planted encoders (real CIFAR-10), its held-out discipline, the no-refit branch
score against an independent computation, bootstrap coverage, and ``imae compare``."""

from __future__ import annotations

import pytest
import torch

from eval_fixtures import FAST, digits_runs
from imae.config.evaluate import EvalConfig, EvalDataConfig
from imae.eval import separability as sep
from imae.eval.bootstrap import Resampler
from imae.eval.eval_split import load_eval_split
from imae.eval.pairs import make_pairs
from imae.eval.subject import Subject
from imae.eval.token_ridge import fit_tokens
from imae.models.mae import MAEArch, MaskedAutoencoder

ALPHAS = [0.1, 0.3, 0.45]


class Planted(MaskedAutoencoder):
    """A frozen 'encoder' with planted tokens: ``A * patch + c_position`` (cls: the patch mean), linear in the
    image, so that the tokens of a mixture are the superposition of the sources' tokens. ``ignore``: tokens
    are noise, whatever the input."""

    def __init__(self, width: int = 48, seed: int = 0, ignore: bool = False) -> None:
        super().__init__(MAEArch(img_size=32, patch_size=4, embed_dim=width, depth=1, num_heads=2,
                                 decoder_embed_dim=width, decoder_depth=1, decoder_num_heads=2))
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(48, width, generator=g) / 7
        self.offset = torch.randn(65, width, generator=g)
        self.ignore = ignore
        with torch.no_grad():  # the distillation space is the token space itself
            self.decoder_embed.weight.copy_(torch.eye(width))
            self.decoder_embed.bias.zero_()
        self.eval()

    def forward_features(self, imgs):
        if self.ignore:
            return torch.randn(imgs.shape[0], 65, self.proj.shape[1])
        p = self.patchify(imgs) @ self.proj
        return torch.cat([p.mean(1, keepdim=True), p], 1) + self.offset

    def forward_encoder(self, imgs, mask_ratio=0.75, noise=None):
        full = self.forward_features(imgs)
        keep = torch.argsort(noise, dim=1)[:, :int(64 * (1 - mask_ratio))] + 1
        idx = torch.cat([torch.zeros_like(keep[:, :1]), keep], 1)
        return torch.gather(full, 1, idx.unsqueeze(-1).expand(-1, -1, full.shape[-1])), None, None


def _subject(model, label):
    return Subject(path=None, run_dir=None, model=model, train_config=None, fingerprint=label, label=label,
                   source=None)


@pytest.fixture(scope="module")
def cifar_test(cifar10_dir):
    cfg = EvalDataConfig(dataset="cifar10", path=str(cifar10_dir), eval_per_class=150)
    return load_eval_split(cfg, "eval", 32, progress=False)


def _measure(cifar_test, model, reference, monkeypatch=None, side_by_side=False, echo=False, p="random", **sep_over):
    cfg = EvalConfig()
    cfg.separability.alphas = ALPHAS
    cfg.separability.mask_ratio = 0.75
    cfg.separability.same_class_p = "random"
    cfg.separability.bootstrap = 200
    cfg.separability.classify = False
    for k, v in sep_over.items():
        setattr(cfg.separability, k, v)
    if side_by_side:
        def both(model, xs, xd, alpha, noise, ratio, pos):
            ts, td = (sep.encoder_tokens(model, x, noise, ratio, pos) for x in (xs, xd))
            return tuple(torch.cat([a, b], -1) for a, b in zip(ts, td))
        monkeypatch.setattr(sep, "mixture_tokens", both)
    if echo:  # a pair look-up: the "mixture" tokens are the reference's tokens of the dominant image
        def dominant(model, xs, xd, alpha, noise, ratio, pos):
            return sep.encoder_tokens(reference, xd, noise, ratio, pos)
        monkeypatch.setattr(sep, "mixture_tokens", dominant)
    pairs = make_pairs(cifar_test.labels, same_class_p=p, seed=0)
    ref = _subject(reference, "ref")
    ref.identity = lambda evaluated: {"label": "ref"}
    return sep.measure(_subject(model, "E"), ref, cifar_test, pairs, cfg, device=torch.device("cpu"),
                       show_progress=False)


def _r2(m, who="sub", ratio="0.75", predictor="encoder"):
    return {a: m.result.r2(who, a, predictor=predictor, ratio=ratio)["r2"] for a in ALPHAS}


def _gain(m, who="sub", ratio="0.75", predictor="encoder"):
    return {a: m.result.gain(who, a, predictor=predictor, ratio=ratio) for a in ALPHAS}


def test_superposed_features_score_on_the_superposition_line(cifar_test):
    planted = Planted()
    m = _measure(cifar_test, planted, planted, baselines=["pixels"], unmasked=True)
    for ratio in ("0.75", "0"):
        for a, r2 in _r2(m, ratio=ratio).items():
            assert abs(r2 - sep.superposition(a)) < 0.03, (ratio, a, r2)
        for a, r2 in _r2(m, "dom", ratio).items():
            assert abs(r2 - (1 - sep.superposition(a))) < 0.03, (ratio, a, r2)
        # class-independent partners: the partner alone says next to nothing, so the gain is the mixture's R^2
        for a, g in _gain(m, ratio=ratio).items():
            assert abs(g["partner"]) < 0.02 and abs(g["gain"] - sep.superposition(a)) < 0.04, (ratio, a, g)


def test_a_partner_echo_gains_nothing_though_same_class_r2_credits_it(cifar_test, monkeypatch):
    planted = Planted()  # E alone is the reference; E of the "mixture" is the reference of the dominant image
    m = _measure(cifar_test, planted, planted, monkeypatch, echo=True, p=1.0, baselines=[], unmasked=False)
    pairs = m.results["pairs"]
    assert pairs["test_same"] > 0.95 * pairs["test"]  # disjoint same-class matching leaves a few mixed pairs
    for a, g in _gain(m).items():
        assert g["mixture"] > 0  # what the mixture R^2 of same-class pairs alone would credit
        lo, hi = g["ci"]
        assert lo <= 0.0 <= hi and abs(g["gain"]) < 1e-9, (a, g)


def test_side_by_side_sources_are_recovered_almost_fully(cifar_test, monkeypatch):
    planted = Planted()
    m = _measure(cifar_test, planted, planted, monkeypatch, side_by_side=True, baselines=[], unmasked=False)
    sub, dom = _gain(m), _gain(m, "dom")
    for a in ALPHAS:
        assert sub[a]["gain"] > 0.9 and dom[a]["gain"] > 0.9 and sub[a]["ci"][0] > 0.9


def test_an_encoder_that_ignores_its_input_scores_zero_below_the_pixel_baseline(cifar_test):
    m = _measure(cifar_test, Planted(ignore=True), Planted(), baselines=["pixels"], unmasked=False)
    pixels = _r2(m, predictor="pixels")
    for a, r2 in _r2(m).items():
        assert abs(r2) < 0.03 and r2 < pixels[a], (a, r2, pixels[a])
        assert a < 0.3 or r2 < pixels[a] - 0.05  # the pixels of the mixture hold the subordinate's share
        lo, hi = m.result.r2("sub", a)["ci"]
        assert lo <= 0.0 + 0.03 and hi >= 0.0 - 0.03
    for a, g in _gain(m).items():
        assert abs(g["gain"]) < 0.03 and g["ci"][0] < 0.03 and g["ci"][1] > -0.03, (a, g)


def test_no_test_pair_reaches_a_fit_or_a_penalty_choice(cifar_test, monkeypatch):
    seen = []
    real = sep.fit_tokens

    def spy(x, y, pos, fit_rows, val_rows, test_rows, groups, penalties):
        seen.append((fit_rows, val_rows, test_rows))
        return real(x, y, pos, fit_rows, val_rows, test_rows, groups, penalties)

    monkeypatch.setattr(sep, "fit_tokens", spy)
    planted = Planted()
    m = _measure(cifar_test, planted, planted, baselines=["pixels"], unmasked=False)
    pairs = m.scorer.pairs
    test_images = set(torch.cat([pairs.sub[m.scorer.test], pairs.dom[m.scorer.test]]).tolist())
    assert len(seen) == 2 * 2 + 2 * len(ALPHAS)  # partner-only (sub, dom) once, mixture per alpha; E and pixels
    for fit_rows, val_rows, test_rows in seen:
        assert torch.equal(test_rows, m.scorer.test)
        used = torch.cat([fit_rows, val_rows])
        assert not set(used.tolist()) & set(test_rows.tolist())
        assert not set(torch.cat([pairs.sub[used], pairs.dom[used]]).tolist()) & test_images


def test_poisoned_test_tokens_change_no_fit_and_no_penalty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, 8, generator=g)
    y = x @ torch.randn(8, 3, generator=g) + 0.5 * torch.randn(60, 5, 3, generator=g)
    pos = torch.randint(0, 9, (60, 5), generator=g)
    rows = torch.arange(60)
    fit, val, test = rows[:30], rows[30:45], rows[45:]
    groups, grid = {"y": slice(0, 3)}, [1e-4, 1e-2, 1.0, 100.0]
    clean = fit_tokens(x, y, pos, fit, val, test, groups, grid)["y"]
    x2 = x.clone()
    x2[test] = 1e6
    poisoned = fit_tokens(x2, y, pos, fit, val, test, groups, grid)["y"]
    assert (poisoned.penalty, poisoned.val_r2) == (clean.penalty, clean.val_r2)
    assert poisoned.r2 < clean.r2 - 1  # only the test score sees the poisoned tokens


def test_bootstrap_intervals_cover_the_true_value_at_least_90_of_100_times():
    g = torch.Generator().manual_seed(1)
    r2_hits = acc_hits = 0
    for trial in range(100):
        n = 200
        sst = torch.distributions.Exponential(1.0).sample((n,))
        sse = 0.4 * sst * torch.rand(n, generator=g) * 2  # E[sse] = 0.4 E[sst]: true R^2 = 0.6
        correct = torch.rand(n, generator=g) < 0.7
        rs = Resampler.draw(n, 1000, seed=trial)
        lo, hi = rs.interval(rs.r2_draws(sse, sst))
        r2_hits += lo <= 0.6 <= hi
        lo, hi = rs.interval(rs.mean_draws(correct))
        acc_hits += lo <= 0.7 <= hi
    assert r2_hits >= 90 and acc_hits >= 90


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


def test_own_branch_r2_equals_the_distillation_loss_over_the_target_variance(runs, tmp_path):
    from imae.data.augment import normalize
    from imae.eval.run import evaluate
    from imae.eval.subject import load_subject
    from imae.eval.token_ridge import position_means
    from imae.eval.tokens import pair_noise, positions

    rec = evaluate("separability", runs["imae"], reference=str(runs["mae"]), overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()])
    r = rec["results"]
    assert r["reference"]["is_teacher"]
    reported = r["tokens"]["0.75"]["branches"]["sub"]["0.3"]["r2"]
    # independently: the i-MAE's own forward pass (its distillation loss) on the same pairs and masks
    student, teacher = load_subject(runs["imae"]).model, load_subject(runs["mae"]).model
    student.attach_teacher(teacher)
    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=12), "eval", 16, progress=False)
    s = EvalConfig().separability  # the pairs the command drew: its default parts, class-independent partners
    pairs = make_pairs(split.labels, s.fractions, "random", 0, s.max_images)
    noise = pair_noise(len(pairs), student.arch.num_patches, 0)
    d = split.data

    def images(rows, which):
        return normalize(split.read(which[rows]), d.mean, d.std)

    test, fit = pairs.rows("test"), pairs.rows("fit")
    with torch.no_grad():
        out = student(images(test, pairs.sub), images(test, pairs.dom), 0.3, 0.75, noise[test])
        targets = {rows: teacher.decoder_embed(teacher.forward_encoder(images(rows, pairs.sub), 0.75, noise[rows])[0])
                   for rows in (fit, test)}
    pos = positions(noise, 0.75)
    mean = position_means(targets[fit], pos[fit], torch.arange(fit.numel()), int(pos.max()) + 1)
    sst = ((targets[test].double() - mean[pos[test]]) ** 2).sum()
    sse = out["distill_sub"].double() * targets[test].numel()
    assert abs(reported - float(1 - sse / sst)) < 1e-4


def test_compare_of_identical_checkpoints_is_zero_and_swapping_flips_the_sign(runs, tmp_path):
    from imae.eval.run import compare_checkpoints

    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3], "separability.bootstrap": 200}.items()]

    def metrics(a, b, out):
        return compare_checkpoints(a, b, reference=str(runs["mae"]), overrides={"output_dir": str(tmp_path / out)},
                                   sets=sets)["results"]

    same = metrics(runs["imae"], runs["imae"], "same")["metrics"]
    for name in ("gain_sub", "gain_dom", "r2_sub", "branch_r2_sub", "sub_class_acc"):
        d = same[name]["0.3"]
        assert d["diff"] == 0 and d["ci"][0] <= 0 <= d["ci"][1]
    assert same["linprobe"]["diff"] == 0 and same["knn"]["ci"] == [0.0, 0.0]
    assert all(d["diff"] == 0 for d in same["linprobe_curve"].values())
    ab, ba = metrics(runs["mae"], runs["imae"], "ab"), metrics(runs["imae"], runs["mae"], "ba")
    assert ab["reference"]["b"]["note"] == "scored against its own teacher" and ab["reference"]["a"]["role"] == "self"
    for name in ("gain_sub", "gain_dom", "r2_sub", "sub_class_acc"):
        x, y = ab["metrics"][name]["0.3"], ba["metrics"][name]["0.3"]
        assert x["diff"] == pytest.approx(-y["diff"], abs=1e-12)
        assert x["ci"] == pytest.approx([-y["ci"][1], -y["ci"][0]], abs=1e-9)
    assert ab["metrics"]["linprobe"]["l2"] == ba["metrics"]["linprobe"]["l2"]  # chosen on the reference alone
    assert (tmp_path / "ab" / "compare.json").is_file()


def test_compare_refuses_a_teacher_as_the_default_reference_and_labels_an_explicit_one(runs, tmp_path, capsys):
    from imae.cli import main

    args = ["compare", str(runs["mae"]), str(runs["imae"]), "--output-dir", str(tmp_path)]
    args += sum((["--set", f"{k}={v}"] for k, v in {**FAST, "separability.alphas": [0.3]}.items()), [])
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "compare needs a referee: --reference" in err[0]
    assert "the teacher" in err[0] and not (tmp_path / "compare.json").exists()
    main(args + ["--reference", str(runs["mae"])])
    out = capsys.readouterr().out
    assert "scored against its own teacher" in out and (tmp_path / "compare.json").is_file()


def test_encoders_a_1e_6_perturbation_apart_get_one_probe_penalty_and_the_same_accuracy(runs, tmp_path):
    from imae import checkpoints as ckpt
    from imae.checkpoints.files import CHECKSUM_KEY
    from imae.eval.run import compare_checkpoints

    ck = ckpt.load(runs["mae"])
    g = torch.Generator().manual_seed(0)
    model = {k: v + 1e-6 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in ck["model"].items()}
    # another checkpoint: the same keys but not the checksum of the weights it was nudged from
    kept = {k: v for k, v in ck.items() if not k.startswith("_") and k != CHECKSUM_KEY}
    torch.save(kept | {"model": model}, tmp_path / "nudged.pth")
    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3], "separability.bootstrap": 200}.items()]
    res = compare_checkpoints(runs["mae"], tmp_path / "nudged.pth", reference=str(runs["imae"]),
                              overrides={"output_dir": str(tmp_path / "out")}, sets=sets)["results"]["metrics"]
    assert res["linprobe"]["l2_rule"].startswith("shared") and res["linprobe"]["l2"] > 0
    assert abs(res["linprobe"]["diff"]) <= 0.002
    # the curve's heads are fitted as one batched L-BFGS problem, which stops short of each head's own optimum:
    # a nudge may move one of the 120 test digits at a grid point, never more
    assert all(abs(d["diff"]) <= 1 / 120 + 1e-9 for d in res["linprobe_curve"].values())


def test_compare_reads_scores_separability_stored_instead_of_measuring_again(runs, tmp_path, monkeypatch):
    from imae.eval import separability as sep_module
    from imae.eval.run import compare_checkpoints, evaluate

    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3], "separability.bootstrap": 200}.items()]
    ref = str(runs["referee"])
    for run in ("mae", "imae"):
        evaluate("separability", runs[run], reference=ref, overrides={"output_dir": str(tmp_path / run)}, sets=sets)
    fresh = compare_checkpoints(runs["mae"], runs["imae"], reference=ref, sets=sets + ["features.cache=false"],
                                overrides={"output_dir": str(tmp_path / "fresh")})["results"]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(sep_module, "measure", no_measuring)
    stored = compare_checkpoints(runs["mae"], runs["imae"], reference=ref, sets=sets,
                                 overrides={"output_dir": str(tmp_path / "stored")})["results"]
    assert stored["metrics"] == fresh["metrics"] and stored["reference"] == fresh["reference"]
    with pytest.raises(AssertionError, match="measured again"):  # other settings: not what was stored
        compare_checkpoints(runs["mae"], runs["imae"], reference=ref, sets=sets + ["separability.alphas=[0.1]"],
                            overrides={"output_dir": str(tmp_path / "other")})


def test_a_damaged_stored_score_file_is_measured_again_with_a_warning(runs, tmp_path, capsys):
    from imae.data.decode import default_cache_dir
    from imae.eval.run import evaluate

    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.45], "separability.bootstrap": 100}.items()]
    first = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "a")}, sets=sets)
    files = sorted((default_cache_dir() / "separability").glob("*.pt"), key=lambda f: f.stat().st_mtime)
    data = bytearray(files[-1].read_bytes())
    data[len(data) // 2:len(data) // 2 + 256] = b"\x00" * 256  # inside a tensor: torch.load does not notice
    files[-1].write_bytes(bytes(data))
    capsys.readouterr()
    again = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "b")}, sets=sets)
    err = capsys.readouterr().err
    assert "the stored separability scores" in err and "are damaged" in err
    assert again["results"] == first["results"] and "stored" not in again["timing"]
