"""Feature extraction: never masks, eval mode without gradients, pooling as documented, cache == no cache."""

from __future__ import annotations

import os

import pytest
import torch

from eval_fixtures import digits_runs
from imae.config.evaluate import EvalDataConfig
from imae.data.augment import normalize
from imae.data.mixing import mix
from imae.eval.eval_split import load_eval_split
from imae.eval.features import FeatureCache, extract
from imae.eval.subject import load_subject
from imae.models.mae import MaskedAutoencoder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def split():
    return load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=5), "eval", 16, progress=False)


def test_evaluation_never_masks_and_runs_in_eval_mode_without_gradients(runs, split, monkeypatch):
    subject = load_subject(runs["imae"])
    model = subject.model.train()  # extraction must switch to eval mode itself
    seen = []
    model.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled())))

    def no_masking(*a, **k):
        raise AssertionError("evaluation called random_masking")

    monkeypatch.setattr(MaskedAutoencoder, "random_masking", no_masking)
    a = extract(model, split, subject.fingerprint, batch_size=16, show_progress=False)
    b = extract(model, split, subject.fingerprint, batch_size=16, show_progress=False)
    assert torch.equal(a.cls, b.cls) and torch.equal(a.mean, b.mean)
    assert seen and all(s == (False, False, True) for s in seen)
    assert not a.cls.requires_grad
    assert model.training  # the caller's mode is restored


def test_pooling_is_the_cls_token_or_the_mean_of_patch_tokens(runs, split):
    subject = load_subject(runs["mae"])
    feats = extract(subject.model, split, subject.fingerprint, batch_size=7, show_progress=False)
    x = normalize(split.data.images, split.data.mean, split.data.std)
    with torch.no_grad():
        tokens = subject.model.eval().forward_features(x)
    assert torch.allclose(feats.pooled("cls"), tokens[:, 0], atol=1e-5)
    assert torch.allclose(feats.pooled("mean"), tokens[:, 1:].mean(1), atol=1e-5)


def test_mixture_features_are_features_of_the_normalised_mixture(runs, split):
    subject = load_subject(runs["mae"])
    pairs = torch.tensor([[0, 1], [2, 3], [4, 0]])
    feats = extract(subject.model, split, subject.fingerprint, pairs=pairs, alpha=0.3, show_progress=False)
    x = normalize(split.data.images, split.data.mean, split.data.std)
    with torch.no_grad():
        expected = subject.model.eval().forward_features(mix(x[pairs[:, 0]], x[pairs[:, 1]], 0.3))[:, 0]
    assert torch.allclose(feats.cls, expected, atol=1e-5)


def test_cached_features_equal_uncached_and_the_key_tracks_checkpoint_and_inputs(runs, split, tmp_path):
    subject = load_subject(runs["mae"])
    cache = FeatureCache(tmp_path / "cache")
    pairs = torch.tensor([[0, 1], [1, 2]])
    fresh = extract(subject.model, split, subject.fingerprint, pairs=pairs, alpha=0.3, cache=cache,
                    show_progress=False)
    hit = extract(subject.model, split, subject.fingerprint, pairs=pairs, alpha=0.3, cache=cache,
                  show_progress=False)
    off = extract(subject.model, split, subject.fingerprint, pairs=pairs, alpha=0.3,
                  cache=FeatureCache(tmp_path / "off", enabled=False), show_progress=False)
    assert not fresh.cached and hit.cached
    assert torch.equal(hit.cls, off.cls) and torch.equal(hit.mean, off.mean)
    assert not (tmp_path / "off").exists()
    other_alpha = extract(subject.model, split, subject.fingerprint, pairs=pairs, alpha=0.4, cache=cache,
                          show_progress=False)
    assert not other_alpha.cached
    # the key is the checkpoint's content: a new mtime alone is the same checkpoint, its features are reused
    # (a different checkpoint with the same mtime is not: tests/test_faults_checkpoints.py)
    ck = subject.path
    st = ck.stat()
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        touched = load_subject(runs["mae"])
        assert touched.fingerprint == subject.fingerprint
        again = extract(touched.model, split, touched.fingerprint, pairs=pairs, alpha=0.3, cache=cache,
                        show_progress=False)
        assert again.cached and torch.equal(again.cls, fresh.cls)
    finally:
        os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_file_based_splits_are_read_resized_and_centre_cropped(runs, tmp_path):
    from PIL import Image

    from imae.eval.eval_split import read_center_crop

    root = tmp_path / "tree"
    for c in ("a", "b"):
        for split in ("train", "val"):
            (root / split / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 20), (40 * i, 200 if c == "a" else 20, 90)).save(root / "val" / c / f"{i}.png")
            Image.new("RGB", (24, 20), (90, 40 * i, 9)).save(root / "train" / c / f"{i}.png")
    cfg = EvalDataConfig(dataset="imagefolder", path=str(root), in_memory=False, num_workers=0)
    files = load_eval_split(cfg, "eval", 16, progress=False)
    assert files.data.images is None and len(files) == 6
    subject = load_subject(runs["mae"])
    feats = extract(subject.model, files, subject.fingerprint, batch_size=4, show_progress=False)
    x = torch.stack([read_center_crop(f, 16) for f in files.data.files])
    assert x.shape == (6, 3, 16, 16)
    with torch.no_grad():
        expected = subject.model.eval().forward_features(normalize(x, files.data.mean, files.data.std))[:, 0]
    assert torch.allclose(feats.cls, expected, atol=1e-5)
