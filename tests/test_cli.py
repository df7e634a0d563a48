"""The command line: bad input gives one line on stderr, exit status 2, no traceback, no lost work."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tiny_cli_sets, tiny_config
from imae.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    lines = [x for x in err.splitlines() if x.startswith("imae: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err
    assert pattern in lines[0], lines[0]


def test_unknown_preset(capsys):
    code, _, err = run_cli(["pretrain", "--preset", "no-such-preset"], capsys)
    assert_one_line_error(code, err, "unknown preset 'no-such-preset'; available: ")
    assert "cifar10-mae-tiny" in err


def test_unknown_or_mistyped_set_key(capsys):
    code, _, err = run_cli(["pretrain", "--set", "train.epoch=3"], capsys)
    assert_one_line_error(code, err, "unknown configuration key 'train.epoch'")
    code, _, err = run_cli(["pretrain", "--set", "train.epochs=many"], capsys)
    assert_one_line_error(code, err, "train.epochs must be an integer, got 'many'")


def test_missing_data_path(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--preset", "cifar10-mae-tiny", "--data-path", str(tmp_path / "none"),
                            "--output-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, f"data path {tmp_path / 'none'} does not exist")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    code, _, err = run_cli(["pretrain", "--preset", "cifar10-mae-tiny", "--data-path", str(tmp_path / "empty"),
                            "--set", "data.dataset=imagefolder", "--output-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "no images found in")


def test_corrupt_jpeg_names_the_file(tmp_path, capsys, cifar10_dir):
    root = tmp_path / "tree"
    (root / "train" / "cat").mkdir(parents=True)
    for f in sorted((cifar10_dir / "train" / "cat").iterdir())[:4]:
        shutil.copy(f, root / "train" / "cat")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = run_cli(["pretrain", "--preset", "cifar10-mae-tiny", "--data-path", str(root),
                            "--output-dir", str(tmp_path / "o"), *tiny_cli_sets(**{"data.cache_dir": "none"})], capsys)
    assert_one_line_error(code, err, "broken.jpg")


def test_image_size_not_divisible_by_patch(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--output-dir", str(tmp_path / "o"), "--set", "model.img_size=15"], capsys)
    assert_one_line_error(code, err, "image size 15 is not divisible by patch size 2")


def test_wrong_architecture_checkpoint_leaves_earlier_outputs_intact(tmp_path, capsys):
    from imae.engine.train import pretrain

    run = pretrain(tiny_config(tmp_path / "first", **{"train.epochs": 1, "train.warmup_epochs": 0}))
    before = (run / "checkpoint-last.pth").read_bytes()
    code, _, err = run_cli(["pretrain", "--output-dir", str(tmp_path / "second"),
                            "--init-from", str(run / "checkpoint-last.pth"), "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "does not fit this model")
    assert "shape mismatch" in err
    assert (run / "checkpoint-last.pth").read_bytes() == before
    code, _, err = run_cli(["pretrain", "--init-from", str(tmp_path / "nothing.pth")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli(["pretrain", "--init-from", str(bad), "--output-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "cannot read checkpoint")


@pytest.mark.slow
def test_entry_point_prints_one_line_and_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "imae", "pretrain", "--preset", "imagenet-mae-base",
                          "--data-path", str(tmp_path / "missing")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("imae: error: data path") and len(res.stderr.strip().splitlines()) == 1


def test_pretrain_cli_prints_the_run_directory(tmp_path, capsys):
    code, out, _ = run_cli(["pretrain", "--output-dir", str(tmp_path / "r"), *tiny_cli_sets(**{"train.epochs": 1})],
                           capsys)
    assert code == 0 and out.strip() == str(tmp_path / "r")
    assert torch.load(tmp_path / "r" / "checkpoint-last.pth", weights_only=True)["epoch"] == 0
