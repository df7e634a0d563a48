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
                   sets=[f"{k}={v}" for k, v in FAST.items()])
    r = _results(rec)
    assert r["reference"]["is_self"] and set(r["regression"]) == {"encoder"}
    enc = r["regression"]["encoder"]
    assert set(enc) == {"sub_pixels", "dom_pixels", "sub_features", "dom_features"}
    # at alpha 0.1 the mixture is nearly the dominant image: its features are nearly the dominant's
    assert enc["dom_features"]["0.1"]["r2"] > 0.8
    assert enc["dom_features"]["0.1"]["r2"] > enc["sub_features"]["0.1"]["r2"] + 0.3
    assert enc["dom_pixels"]["0.1"]["r2"] > enc["sub_pixels"]["0.1"]["r2"]
    for target in enc.values():
        for scores in target.values():
            assert scores["r2"] <= 1 and math.isfinite(scores["r2"]) and scores["penalty"] > 0
    cls = r["classification"]["0.1"]
    assert cls["dom_acc"] > cls["sub_acc"]
    assert r["pairs"]["test"] == 24 and (tmp_path / "separability.json").is_file()


def test_imae_reference_defaults_to_its_teacher_and_branch_latents_are_predictors(runs, tmp_path):
    rec = evaluate("separability", runs["imae"], overrides={"output_dir": str(tmp_path)},
                   sets=[f"{k}={v}" for k, v in {**FAST, "separability.alphas": [0.3]}.items()])
    r = _results(rec)
    assert set(r["regression"]) == {"encoder", "branch_sub", "branch_dom"}
    assert not r["reference"]["is_self"] and r["reference"]["label"] == "mae"
    assert rec["checkpoint"]["kind"] == "imae"


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
    assert sep["same_class_p"] == 0.5 and 0.3 < sep["pairs"]["same_class_rate"] < 0.7
    scores = sep["regression"]["encoder"]["sub_features"]["0.3"]
    assert scores["r2_same"] is not None and scores["r2_diff"] is not None
    assert rec["data"]["train_images"] == 200 and rec["data"]["eval_images"] == 120
