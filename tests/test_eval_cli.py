"""The evaluation commands on the command line: result files, official checkpoints, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from eval_fixtures import digits_runs, fast_sets, official_checkpoint
from test_cli import assert_one_line_error, run_cli

KEYS = {"command", "version", "checkpoint", "data", "config", "results", "timing"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def official(runs, tmp_path_factory):
    return official_checkpoint(runs["mae"], tmp_path_factory.mktemp("official") / "mae_pretrain_tiny.pth")


@pytest.mark.parametrize("command", ["separability", "semantics", "linprobe", "knn"])
def test_each_command_writes_its_json_and_prints_the_path(command, runs, tmp_path, capsys):
    ref = ["--reference", str(runs["referee"])] if command in ("separability", "semantics") else []
    code, out, err = run_cli([command, str(runs["imae"]), "--output-dir", str(tmp_path), *fast_sets(), *ref], capsys)
    assert code == 0, err
    path = tmp_path / f"{command}.json"
    assert out.strip() == str(path)
    rec = json.loads(path.read_text())
    assert set(rec) >= KEYS and rec["command"] == command
    assert rec["checkpoint"]["kind"] == "imae" and rec["data"]["dataset"] == "digits"


def test_official_layout_checkpoint_is_accepted_by_every_command(official, tmp_path, capsys):
    # width 32 has no standard head count: an official layout carries none, so it is given
    data = ["--set", "data.dataset=digits", "--set", "num_heads=2", *fast_sets()]
    for command in ("separability", "semantics", "linprobe", "knn"):
        code, out, err = run_cli([command, str(official), *data], capsys)
        assert code == 0, err
        rec = json.loads((official.parent / "mae_pretrain_tiny-eval" / f"{command}.json").read_text())
        assert rec["checkpoint"]["official_layout"] and rec["checkpoint"]["kind"] == "mae"
    code, out, err = run_cli(["figures", str(official), "--output-dir", str(tmp_path / "fig"), *data], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "fig").glob("*.png"))) == 5
    code, out, err = run_cli(["finetune", str(official), "--output-dir", str(tmp_path / "ft"), "--epochs", "1",
                              "--set", "finetune.batch_size=16", "--set", "data.num_workers=0",
                              "--set", "data.train_per_class=4", "--set", "data.eval_per_class=2",
                              "--set", "data.dataset=digits", "--set", "num_heads=2"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["results"]["epochs"] == 1


def test_official_checkpoint_without_a_data_set_is_a_one_line_error(official, capsys):
    code, _, err = run_cli(["knn", str(official), "--set", "num_heads=2"], capsys)
    assert_one_line_error(code, err, "no data set to evaluate on")


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    for command in ("separability", "semantics", "linprobe", "knn", "finetune", "figures"):
        code, _, err = run_cli([command, str(tmp_path / "nothing.pth")], capsys)
        assert_one_line_error(code, err, "does not exist")


def test_data_of_another_image_size_is_a_one_line_error(runs, cifar10_dir, capsys):
    code, _, err = run_cli(["linprobe", str(runs["mae"]), "--set", "data.dataset=cifar10", "--data-path",
                            str(cifar10_dir)], capsys)
    assert_one_line_error(code, err, "cifar10 images are 32x32 but the checkpoint's model takes 16x16")


def test_empty_evaluation_split_is_a_one_line_error(runs, tmp_path, capsys, cifar10_dir):
    code, _, err = run_cli(["separability", str(runs["mae"]), "--set", "data.eval_per_class=0"], capsys)
    assert_one_line_error(code, err, "the evaluation split of digits is empty")
    root = tmp_path / "tree"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "val" / "cat").mkdir(parents=True)  # an evaluation folder without images
    for f in sorted((cifar10_dir / "train" / "cat").iterdir())[:4]:
        shutil.copy(f, root / "train" / "cat")
    Image.open(next((root / "train" / "cat").iterdir())).resize((16, 16)).save(root / "train" / "cat" / "x.png")
    code, _, err = run_cli(["knn", str(runs["mae"]), "--data-path", str(root), "--set", "data.dataset=imagefolder",
                            "--set", "data.cache_dir=none"], capsys)
    assert_one_line_error(code, err, "no images found in")


def test_epochs_and_unknown_keys_are_one_line_errors(runs, capsys):
    code, _, err = run_cli(["knn", str(runs["mae"]), "--epochs", "3"], capsys)
    assert_one_line_error(code, err, "--epochs has no meaning for `imae knn`")
    code, _, err = run_cli(["linprobe", str(runs["mae"]), "--epochs", "3"], capsys)
    assert_one_line_error(code, err, "--epochs applies to the full protocol")
    code, _, err = run_cli(["knn", str(runs["mae"]), "--set", "knn.kk=3"], capsys)
    assert_one_line_error(code, err, "unknown configuration key 'knn.kk'")
    code, _, err = run_cli(["knn", str(runs["mae"]), "--set", "features.pool=max"], capsys)
    assert_one_line_error(code, err, "features.pool must be one of cls, mean")


def test_options_change_the_numbers(runs, tmp_path, capsys):
    """No dead flags: pooling, k and the probe mode each change what is computed."""
    def run(name, *sets):
        code, out, err = run_cli([name, str(runs["mae"]), "--output-dir", str(tmp_path / "x"), *fast_sets(),
                                  *sets], capsys)
        assert code == 0, err
        return json.loads((tmp_path / "x" / f"{name}.json").read_text())["results"]

    base = run("separability")
    mean_sep = run("separability", "--set", "features.pool=mean")
    assert base["classification"]["pool"] == "cls" and mean_sep["classification"]["pool"] == "mean"
    assert base["classification"]["encoder"] != mean_sep["classification"]["encoder"]
    assert base["tokens"] == mean_sep["tokens"]  # pooling is the classification's, tokens are tokens
    enc = ("tokens", "0.75", "mixture", "encoder", "distill", "sub", "0.3")
    small = run("separability", "--set", "separability.pixel_size=4")
    assert small["classification"]["baselines"]["pixels"] != base["classification"]["baselines"]["pixels"]
    half = run("separability", "--set", "separability.mask_ratio=0.5", "--set", "separability.unmasked=false")
    assert half["ratios"] == ["0.5"] and half["mask_ratio"] == 0.5
    assert half["tokens"]["0.5"]["mixture"]["encoder"] != base["tokens"]["0.75"]["mixture"]["encoder"]
    few = run("separability", "--set", "separability.baselines=[pixels]", "--set", "separability.pooled=[mean]")
    assert set(few["tokens"]["0.75"]["gain"]) == {"encoder", "pixels"} and set(few["pooled"]) == {"mean"}
    assert set(few["pooled"]["mean"]["0.75"]["gain"]["encoder"]["distill"]) == {"sub", "dom"}
    other = run("separability", "--set", "separability.random_init_seed=1", "--set", "separability.bootstrap=50")
    rand = ("tokens", "0.75", "gain", "random_init", "distill", "sub", "0.3", "gain")
    assert _get(other, rand) != _get(base, rand)
    assert _get(other, enc)["r2"] == _get(base, enc)["r2"] and _get(other, enc)["ci"] != _get(base, enc)["ci"]
    p1 = run("separability", "--set", "separability.same_class_p=1")
    assert p1["pairs"]["same_class_rate"] > 0.7 > 0.3 > base["pairs"]["same_class_rate"]
    knn20, knn1 = run("knn"), run("knn", "--set", "knn.k=1")
    assert knn1["k"] == 1 and (knn1["top1"], knn1["top5"]) != (knn20["top1"], knn20["top5"])
    full = run("linprobe", "--set", "linprobe.mode=full", "--epochs", "2", "--set", "linprobe.batch_size=64",
               "--set", "linprobe.blr=10")
    assert full["mode"] == "full" and full["final_loss"] is not None


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def test_a_pretraining_preset_names_the_data_set_of_an_official_checkpoint(official, tmp_path, capsys):
    code, _, err = run_cli(["knn", str(official), "--preset", "digits-mae", "--output-dir", str(tmp_path),
                            "--set", "num_heads=2", *fast_sets()], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "knn.json").read_text())["config"]["data"]["dataset"] == "digits"
    code, _, err = run_cli(["knn", str(official), "--preset", "finetune/cifar10-tiny"], capsys)
    assert_one_line_error(code, err, "has key 'finetune', which is neither an evaluation nor a pre-training setting")


def test_compare_prints_the_difference_table_and_writes_compare_json(runs, tmp_path, capsys):
    code, out, err = run_cli(["compare", str(runs["mae"]), str(runs["imae"]), "--output-dir", str(tmp_path),
                              "--reference", str(runs["referee"]), *fast_sets(), "--set", "separability.alphas=[0.3]",
                              "--set", "separability.bootstrap=50"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "compare.json").read_text())
    assert rec["results"]["reference"]["b"]["role"] == "referee"
    assert "reference: referee (a referee for both)" in out
    d = rec["results"]["metrics"]["gain_sub"]["0.3"]
    line = next(x for x in out.splitlines() if x.startswith("gain_sub"))
    assert line.split()[1:] == ["0.3", f"{d['a']:.3f}", f"{d['b']:.3f}", f"{d['diff']:+.3f}",
                                f"[{d['ci'][0]:+.3f},", f"{d['ci'][1]:+.3f}]"]
    assert out.strip().splitlines()[-1] == str(tmp_path / "compare.json")
    code, _, err = run_cli(["compare", str(runs["mae"]), str(runs["imae"]), "--epochs", "3"], capsys)
    assert_one_line_error(code, err, "--epochs has no meaning for `imae compare`")
