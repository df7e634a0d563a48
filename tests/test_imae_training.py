"""i-MAE through the training engine and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import tiny_cli_sets, tiny_config
from imae import checkpoints as ckpt
from imae.engine.train import pretrain
from test_cli import assert_one_line_error, run_cli

ONE_EPOCH = {"train.epochs": 1, "train.warmup_epochs": 0}


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    return pretrain(tiny_config(tmp_path_factory.mktemp("t") / "mae", **ONE_EPOCH))


def test_imae_run_logs_every_term_the_same_class_rate_and_alpha(tmp_path, digits_teacher):
    cfg = tiny_config(tmp_path / "imae", preset="digits-imae",
                      **{"imae.teacher": str(digits_teacher), "init_from": str(digits_teacher)})
    run = pretrain(cfg)
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in x]
    last = [r for r in epochs if r["kind"] == "epoch"][-1]
    assert {"loss", "rec_sub", "rec_dom", "distill_sub", "distill_dom"} <= set(last)
    assert last["same_class_rate"] == 1.0 and 0.2 < last["alpha_mean"] < 0.3
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["kind"] == "imae" and ck["imae_options"]["branches"] == "two"
    assert "decoder_embed_sub.weight" in ck["model"] and "decoder_embed.weight" not in ck["model"]


def test_imae_resume_is_exact(tmp_path, digits_teacher, monkeypatch):
    from test_engine import _stop_after_first_epoch

    over = {"imae.teacher": str(digits_teacher), "imae.same_class_p": 0.5, "imae.alpha_mode": "beta",
            "imae.alpha_beta": [2.0, 2.0]}
    straight = pretrain(tiny_config(tmp_path / "a", preset="digits-imae", **over))
    with monkeypatch.context() as m:
        _stop_after_first_epoch(m)
        stopped = pretrain(tiny_config(tmp_path / "b", preset="digits-imae", **over))
    resumed = pretrain(tiny_config(tmp_path / "x", preset="digits-imae", **over), resume=str(stopped))
    a = ckpt.load(straight / "checkpoint-last.pth")["model"]
    b = ckpt.load(resumed / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_of_another_image_size_is_a_one_line_error(tmp_path, capsys, digits_teacher):
    other = pretrain(tiny_config(tmp_path / "big", **ONE_EPOCH, **{"model.img_size": 32, "model.patch_size": 4}))
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--teacher", str(other),
                            "--output-dir", str(tmp_path / "o"), *tiny_cli_sets()], capsys)
    assert_one_line_error(code, err, "same image and patch size")


def test_encoder_only_teacher_and_mismatching_student_start_are_one_line_errors(tmp_path, capsys, digits_teacher):
    full = ckpt.load(digits_teacher / "checkpoint-last.pth")["model"]
    encoder_only = {k: v for k, v in full.items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "encoder.pth")
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--teacher", str(tmp_path / "encoder.pth"),
                            "--output-dir", str(tmp_path / "o"), *tiny_cli_sets()], capsys)
    assert_one_line_error(code, err, "holds only an encoder")
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--teacher", str(digits_teacher),
                            "--init-from", str(digits_teacher), "--output-dir", str(tmp_path / "o2"),
                            *tiny_cli_sets(**{"model.depth": 2})], capsys)
    assert_one_line_error(code, err, "does not fit this model")


def test_same_class_p_on_unlabeled_data_is_a_one_line_error(tmp_path, capsys, digits_teacher):
    flat = tmp_path / "flat" / "train"
    flat.mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (16, 16), (i * 5, 0, 0)).save(flat / f"{i}.png")
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--teacher", str(digits_teacher),
                            "--data-path", str(flat.parent), "--set", "data.dataset=imagefolder",
                            "--output-dir", str(tmp_path / "o"), *tiny_cli_sets(**{"data.cache_dir": "none"})],
                           capsys)
    assert_one_line_error(code, err, "needs class labels")
    assert "imae.same_class_p=random" in err


def test_alpha_outside_range_and_missing_teacher_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--set", "imae.alpha_mode=fixed",
                            "--set", "imae.alpha=0.8", "--output-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "imae.alpha must lie in (0, 0.5]")
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--output-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "needs a frozen MAE teacher")


def test_unmixed_ablation_runs_without_a_teacher(tmp_path):
    run = pretrain(tiny_config(tmp_path / "u", preset="digits-imae",
                               **{"imae.same_class_p": "self", "imae.distill": False, **ONE_EPOCH}))
    last = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()][-1]
    assert last["kind"] == "epoch" and "distill_sub" not in last and "same_class_rate" not in last
