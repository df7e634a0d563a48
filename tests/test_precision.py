"""bf16 autocast on CPUs with bf16 units (imae.runtime.precision): detection, training, evaluation, exact resume.

The CPU these tests run on may lack bf16 units; ``IMAE_CPU_BF16=1`` runs the bf16 path anyway (emulated there:
slower, but the same rounding of the matrix products' inputs to bf16, with fp32 accumulation).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import pretrain_stopped_mid_epoch, tiny_config, tiny_mae
from imae import checkpoints as ckpt
from imae.engine.train import pretrain
from imae.runtime import precision

# bf16 against fp32 on the tiny digits run: each step's loss within 2% (measured: under 0.2%), the last epoch's
# mean within 1%; benchmarks/precision_curves.py measures longer digits and CIFAR-10 runs against the same bounds
STEP_RTOL, EPOCH_RTOL = 0.02, 0.01


def _records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _start(run):
    return next(r for r in _records(run, "event") if r["event"] == "start")


def test_detection_needs_the_cpus_bf16_units_and_amp(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "_detected", lambda: False)
    assert precision.name("cpu") == "fp32" and not precision.uses_bf16("cpu", amp=True)
    assert isinstance(precision.autocast("cpu"), type(precision.autocast("cpu", amp=False)))  # no autocast at all
    monkeypatch.setattr(precision, "_detected", lambda: True)
    assert precision.name("cpu") == "bf16" and precision.name("cpu", amp=False) == "fp32"
    with precision.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast("cpu", amp=False):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv(precision.ENV, "0")  # the override wins over detection, both ways
    assert precision.name("cpu") == "fp32"
    monkeypatch.setattr(precision, "_detected", lambda: False)
    monkeypatch.setenv(precision.ENV, "1")
    assert precision.name("cpu") == "bf16"
    assert precision.name("cuda") == "bf16" and precision.name("cuda", amp=False) == "fp32"
    assert precision.name("meta") == "fp32"


def test_the_flags_read_are_the_kernels_bf16_ones(monkeypatch):
    precision._detected.cache_clear()
    try:
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
        assert precision._detected() is False  # an AVX2 CPU: bf16 would be emulated, far slower
        precision._detected.cache_clear()
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
        assert precision._detected() is True
    finally:
        precision._detected.cache_clear()


@pytest.mark.slow  # three tiny runs each, bf16 emulated on a CPU without bf16 units
def test_bf16_and_fp32_train_with_agreeing_loss_curves_and_amp_false_is_fp32(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(precision.ENV, "0")  # a CPU without bf16 units: fp32, said once, no warning
    fp32 = pretrain(tiny_config(tmp_path / "fp32"))
    err = capsys.readouterr().err
    assert "process(es) on cpu in fp32;" in err and "warning" not in err.lower()
    monkeypatch.setenv(precision.ENV, "1")  # a CPU with them
    bf16 = pretrain(tiny_config(tmp_path / "bf16"))
    assert "process(es) on cpu in bf16;" in capsys.readouterr().err
    off = pretrain(tiny_config(tmp_path / "off", **{"train.amp": False}))
    assert [_start(r)["precision"] for r in (fp32, bf16, off)] == ["fp32", "bf16", "fp32"]
    a, b, c = ([s["loss"] for s in _records(r, "step")] for r in (fp32, bf16, off))
    assert len(a) == len(b) == 12
    assert c == a  # train.amp=false on a bf16 CPU is the fp32 run, bit for bit
    assert b != a  # and bf16 did run
    assert b == pytest.approx(a, rel=STEP_RTOL)
    last = [_records(r, "epoch")[-1]["loss"] for r in (fp32, bf16)]
    assert last[1] == pytest.approx(last[0], rel=EPOCH_RTOL)
    w = ckpt.load(bf16 / "checkpoint-last.pth")["model"]
    assert {v.dtype for v in w.values() if v.is_floating_point()} == {torch.float32}  # weights stay fp32


@pytest.mark.slow  # three tiny runs each, bf16 emulated on a CPU without bf16 units
def test_a_killed_and_resumed_bf16_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.ENV, "1")
    ref = pretrain(tiny_config(tmp_path / "ref"))
    run = pretrain_stopped_mid_epoch(tiny_config(tmp_path / "run"), monkeypatch)
    assert ckpt.load(run / "checkpoint-last.pth")["step_in_epoch"] == 3
    pretrain(tiny_config(tmp_path / "x"), resume=str(run))
    a = ckpt.load(ref / "checkpoint-last.pth")["model"]
    b = ckpt.load(run / "checkpoint-last.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s["loss"] for s in _records(run, "step")][-3:] == [s["loss"] for s in _records(ref, "step")][-3:]


def test_feature_extraction_runs_in_bf16_close_to_fp32_and_is_cached_apart(tmp_path, monkeypatch):
    from imae.config.evaluate import EvalDataConfig
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import FeatureCache, extract

    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=3), "eval", 16, progress=False)
    torch.manual_seed(0)
    model = tiny_mae(img_size=16)
    cache = FeatureCache(tmp_path / "cache")
    seen = []
    real = model.encode_layers  # what extraction runs the encoder through
    monkeypatch.setattr(model, "encode_layers",
                        lambda x, layers: seen.append(torch.is_autocast_enabled("cpu")) or real(x, layers))
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(precision.ENV, flag)
        out[flag] = extract(model, split, "fp", cache=cache, show_progress=False)
    assert seen[0] is False and seen[-1] is True  # the second was extracted, not read from the first's cache
    lo, hi = out["1"], out["0"]
    assert lo.cls.dtype == hi.cls.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(lo.mean, hi.mean, dim=1)
    assert cos.min() > 0.99 and not torch.equal(lo.mean, hi.mean)
