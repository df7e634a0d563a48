"""Separability and semantics: pairs fixed by the seed, targets aligned, results reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from eval_fixtures import FAST, digits_runs
from imae.errors import DataError
from imae.eval.pairs import make_pairs
from imae.eval.run import evaluate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


def test_pairs_are_seeded_disjoint_across_parts_and_follow_the_same_class_rate():
    labels = torch.arange(300) % 10
    a = make_pairs(labels, seed=4)
    b = make_pairs(labels, seed=4)
    assert torch.equal(a.index, b.index) and torch.equal(a.part, b.part)
    assert not torch.equal(a.index, make_pairs(labels, seed=5).index)
    assert a.summary()["fit"] == 180 and a.summary()["val"] == 60 and a.summary()["test"] == 60
    assert sorted(a.sub.tolist()) == list(range(300))  # every image is a subordinate once
    assert bool((a.sub != a.dom).all())
    part_of = torch.empty(300, dtype=torch.long)
    part_of[a.sub] = a.part
    assert torch.equal(part_of[a.dom], a.part)  # partners come from the same part
    two = torch.arange(300) % 2  # every part holds many images of each class
    assert bool(make_pairs(two, same_class_p=1.0).same.all())
    assert not bool(make_pairs(two, same_class_p=0.0).same.any())
    half = make_pairs(torch.arange(2000) % 10, same_class_p=0.5).same.float().mean()
    assert 0.45 < float(half) < 0.55


def test_pairs_refuse_numeric_p_without_labels_and_too_few_images():
    with pytest.raises(DataError, match="needs class labels"):
        make_pairs(torch.full((50,), -1), same_class_p=0.5)
    assert len(make_pairs(torch.full((50,), -1), same_class_p="random")) == 50
    with pytest.raises(DataError, match="at least 2 images"):
        make_pairs(torch.arange(5))


def _results(record):
    return record["results"]


def test_separability_of_an_mae_targets_are_aligned_with_the_pairs(runs, tmp_path):
    rec = evaluate("separability", runs["mae"], overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in FAST.items()] + ["separability.unmasked=true"])
    r = _results(rec)
    assert r["reference"]["is_self"] and r["mask_ratio"] == 0.75 and r["ratios"] == ["0.75", "0"]
    assert r["pairs"]["same_class_p"] == "random"  # an MAE run has no training p
    for ratio in r["ratios"]:
        block = r["tokens"][ratio]
        assert set(block) == {"encoder", "baselines"}  # an MAE has no branch maps
        assert set(block["baselines"]) == {"pixels", "reference_on_mixture", "random_init", "partner_only"}
        enc = block["encoder"]
        assert set(enc) == {"distill", "encoder"} and set(enc["distill"]) == {"sub", "dom", "sum"}
        # at alpha 0.1 the mixture is nearly the dominant image: its tokens are nearly the dominant's
        for space in ("distill", "encoder"):
            assert enc[space]["dom"]["0.1"]["r2"] > enc[space]["sub"]["0.1"]["r2"] + 0.3
            for who in ("sub", "dom"):
                for scores in enc[space][who].values():
                    lo, hi = scores["ci"]
                    assert math.isfinite(scores["r2"]) and scores["r2"] <= 1 and scores["penalty"] > 0
                    assert lo <= scores["r2"] <= hi
                    same, diff = scores["same"], scores["diff"]
                    assert same is None or same["n"] + (diff["n"] if diff else 0) == r["pairs"]["test"]
    # the MAE is its own reference: on the clean dominant image alone it predicts the dominant's tokens exactly
    partner = r["tokens"]["0.75"]["baselines"]["partner_only"]["encoder"]["dom"]
    assert partner["r2"] > 0.999
    assert r["superposition"]["0.3"]["sub"] == pytest.approx(0.09 / 0.58)
    cls = r["classification"]
    assert cls["encoder"]["0.1"]["dom"]["acc"] > cls["encoder"]["0.1"]["sub"]["acc"]
    assert set(cls["baselines"]) == {"pixels", "partner_only"} and 0 < cls["chance"]["sub"] < 0.5
    assert r["pairs"]["test"] == 48 and (tmp_path / "separability.json").is_file()  # 40% of 120 test digits


def test_imae_reference_defaults_to_its_teacher_and_its_pairs_to_its_training_p(runs, tmp_path):
    rec = evaluate("separability", runs["imae"], overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()])
    r = _results(rec)
    assert set(r["tokens"]["0.75"]["branches"]) == {"sub", "dom"}
    assert not r["reference"]["is_self"] and r["reference"]["is_teacher"] and r["reference"]["label"] == "mae"
    assert len(r["reference"]["sha256"]) == 64
    assert r["pairs"]["same_class_p"] == 1.0 and r["pairs"]["same_class_rate"] > 0.9
    assert rec["checkpoint"]["kind"] == "imae"


def test_separability_settings_are_validated():
    from imae.errors import ConfigError

    for bad in ("separability.baselines=[pixel]", "separability.pooled=[max]", "separability.mask_ratio=1.0",
                "separability.bootstrap=3"):
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
    rec = evaluate("semantics", runs["imae"], overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()])
    r = _results(rec)
    for value in (r["linprobe"]["top1"], r["knn"]["top1"], r["nmi"]):
        assert 0.0 <= value <= 1.0
    assert r["linprobe"]["top1"] > 0.3  # digits are easy even for a one-epoch encoder (chance 0.1)
    sep = r["separability"]
    assert sep["same_class_p"] == sep["pairs"]["same_class_p"] == 0.5 and 0.3 < sep["pairs"]["same_class_rate"] < 0.7
    scores = sep["tokens"]["0.75"]["encoder"]["distill"]["sub"]["0.3"]
    assert scores["same"]["n"] > 0 and scores["diff"]["n"] > 0
    assert scores["same"]["n"] + scores["diff"]["n"] == sep["pairs"]["test"]
    assert rec["data"]["train_images"] == 200 and rec["data"]["eval_images"] == 120
