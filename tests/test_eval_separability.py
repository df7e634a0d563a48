"""Separability and semantics: pairs fixed by the seed, targets aligned, results reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from eval_fixtures import FAST, digits_runs
from imae.errors import DataError
from imae.eval.pairs import make_pairs
from imae.eval.run import evaluate
from imae.eval.separability_result import SeparabilityResult


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


def test_pairs_are_seeded_disjoint_within_and_across_parts_and_follow_the_same_class_rate():
    labels = torch.arange(300) % 10
    a = make_pairs(labels, seed=4)
    b = make_pairs(labels, seed=4)
    assert torch.equal(a.index, b.index) and torch.equal(a.part, b.part)
    assert not torch.equal(a.index, make_pairs(labels, seed=5).index)
    assert (a.summary()["fit"], a.summary()["val"], a.summary()["test"]) == (60, 30, 60)  # 120 / 60 / 120 images
    used = torch.cat([a.sub, a.dom])
    assert used.unique().numel() == used.numel() == 300  # every image in exactly one pair (index level)
    for p in (1.0, 0.0, 0.5):
        pairs = make_pairs(torch.arange(2000) % 10, same_class_p=p, seed=1)
        both = torch.cat([pairs.sub, pairs.dom])
        assert both.unique().numel() == both.numel()  # disjoint for a numeric p too
        rate = float(pairs.same.float().mean())
        assert abs(rate - p) < 0.05, (p, rate)
    free = make_pairs(torch.arange(4000) % 10, seed=2).same.float().mean()  # class-independent: about 1/C
    assert 0.07 < float(free) < 0.13


def test_pairs_refuse_numeric_p_without_labels_and_too_few_images():
    with pytest.raises(DataError, match="needs class labels"):
        make_pairs(torch.full((50,), -1), same_class_p=0.5)
    assert len(make_pairs(torch.full((50,), -1), same_class_p="random")) == 25
    with pytest.raises(DataError, match="at least 4 images"):
        make_pairs(torch.arange(9))


def _results(record):
    return record["results"]


def test_separability_of_an_mae_targets_are_aligned_with_the_pairs(runs, tmp_path):
    rec = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in FAST.items()] + ["separability.unmasked=true"])
    r = _results(rec)
    assert r["reference"]["is_self"] and r["reference"]["role"] == "self" and r["mask_ratio"] == 0.75
    assert r["ratios"] == ["0.75", "0"] and r["pairs"]["same_class_p"] == "random"
    assert r["headline"] == {"alpha": "0.3", "ratio": "0.75", "space": "distill", "source": "sub"}
    res = SeparabilityResult.from_json(r)
    for ratio in r["ratios"]:
        block = r["tokens"][ratio]
        assert set(block) == {"mixture", "partner", "gain"}  # an MAE has no branch maps
        assert set(block["mixture"]) == {"encoder", "pixels", "reference_on_mixture", "random_init"}
        # at alpha 0.1 the mixture is nearly the dominant image: its tokens are nearly the dominant's
        for space in ("distill", "encoder"):
            assert res.r2("dom", 0.1, space=space, ratio=ratio)["r2"] > res.r2("sub", 0.1, space=space,
                                                                               ratio=ratio)["r2"] + 0.3
            for who in ("sub", "dom"):
                for a in ("0.1", "0.3"):
                    m, g = res.r2(who, a, space=space, ratio=ratio), res.gain(who, a, space=space, ratio=ratio)
                    lo, hi = m["ci"]
                    assert math.isfinite(m["r2"]) and m["r2"] <= 1 and m["penalty"] > 0 and lo <= m["r2"] <= hi
                    p = res.partner(who, space=space, ratio=ratio)
                    assert g["gain"] == pytest.approx(m["r2"] - p["r2"]) and g["ci"][0] <= g["gain"] <= g["ci"][1]
                    parts = [x["n"] for x in (g["same"], g["diff"]) if x]
                    assert sum(parts) == r["pairs"]["test"] == r["pairs"]["test_same"] + r["pairs"]["test_diff"]
    # the MAE is its own reference: its tokens of the subordinate alone say nothing certain of the dominant's
    assert res.partner("dom", space="encoder")["r2"] < 0.5
    assert r["superposition"]["0.3"]["sub"] == pytest.approx(0.09 / 0.58)
    cls = r["classification"]
    assert cls["encoder"]["0.1"]["dom"]["acc"] > cls["encoder"]["0.1"]["sub"]["acc"]
    assert set(cls["baselines"]) == {"pixels", "partner_only"} and 0 < cls["chance_diff"]["sub"] < 0.5
    assert res.class_accuracy("sub", "0.1")["n"] == r["pairs"]["test_diff"]  # different-class pairs only
    assert r["pairs"]["test"] == 24 and (tmp_path / "separability.json").is_file()  # 40% of 120 digits, in pairs


def test_an_imae_needs_a_reference_and_its_teacher_is_labelled_as_such(runs, tmp_path, capsys):
    from imae.cli import main
    from imae.errors import ConfigError

    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()]
    with pytest.raises(ConfigError, match="score it against a referee with --reference"):
        evaluate("separability", runs["imae"], overrides={"output_dir": str(tmp_path)}, sets=sets)
    with pytest.raises(SystemExit) as exit_:
        main(["separability", str(runs["imae"]), "--output-dir", str(tmp_path), *sum((["--set", x] for x in sets), [])])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference" in err[0] and not list(tmp_path.iterdir())
    rec = evaluate("separability", runs["imae"], reference=str(runs["mae"]), overrides={"output_dir": str(tmp_path)},
                   sets=sets)
    r = _results(rec)
    assert set(r["tokens"]["0.75"]["branches"]) == {"sub", "dom"}
    ref = r["reference"]
    assert ref["role"] == "teacher" and ref["is_teacher"] and ref["note"] == "scored against its own teacher"
    assert len(ref["sha256"]) == 64 and r["pairs"]["same_class_p"] == "random"
    assert "scored against its own teacher" in capsys.readouterr().err
    assert rec["checkpoint"]["kind"] == "imae"


def test_separability_settings_are_validated():
    from imae.errors import ConfigError

    for bad in ("separability.baselines=[pixel]", "separability.baselines=[partner_only]",
                "separability.pooled=[max]", "separability.mask_ratio=1.0", "separability.bootstrap=3"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            from imae.config import resolve
            from imae.config.evaluate import EvalConfig

            resolve({}, None, [bad], EvalConfig)


def test_rerunning_gives_the_same_numbers_with_and_without_the_cache(runs, tmp_path):
    sets = [f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()]
    first = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "a")}, sets=sets)
    again = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "b")}, sets=sets)
    uncached = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "c")},
                        sets=sets + ["features.cache=false"])
    assert first["results"] == again["results"] == uncached["results"]
    other_seed = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path / "d"), "seed": 1},
                          sets=sets)
    assert other_seed["results"] != first["results"]


def test_semantics_reports_probe_knn_nmi_and_same_vs_different_class_separability(runs, tmp_path):
    rec = evaluate("semantics", runs["imae"], reference=str(runs["mae"]), overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()])
    r = _results(rec)
    for value in (r["linprobe"]["top1"], r["knn"]["top1"], r["nmi"]):
        assert 0.0 <= value <= 1.0
    assert r["linprobe"]["top1"] > 0.3  # digits are easy even for a one-epoch encoder (chance 0.1)
    sep = r["separability"]
    assert sep["same_class_p"] == sep["pairs"]["same_class_p"] == 0.5 and 0.3 < sep["pairs"]["same_class_rate"] < 0.7
    scores = SeparabilityResult.from_json(sep).gain("sub", 0.3)
    assert scores["same"]["n"] > 0 and scores["diff"]["n"] > 0
    assert scores["same"]["n"] + scores["diff"]["n"] == sep["pairs"]["test"]
    assert rec["data"]["train_images"] == 200 and rec["data"]["eval_images"] == 120


def test_semantics_without_its_separability_part_needs_no_reference_and_reports_the_clean_measures(runs, tmp_path):
    sets = [f"{k}={v}" for k, v in FAST.items()]
    full = evaluate("semantics", runs["imae"], reference=str(runs["referee"]), overrides={"output_dir": str(tmp_path)},
                    sets=sets)["results"]
    lean = evaluate("semantics", runs["imae"], overrides={"output_dir": str(tmp_path / "lean")},
                    sets=sets + ["semantics.separability=false"])["results"]
    assert "separability" not in lean and "separability" in full
    assert {k: lean[k] for k in ("linprobe", "knn", "nmi")} == {k: full[k] for k in ("linprobe", "knn", "nmi")}
