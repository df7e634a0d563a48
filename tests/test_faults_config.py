"""Fault injection in the configuration: values that would train backwards or nothing, counts out of range,
non-finite numbers, presets of the wrong shape and YAML alias bombs.

Each case must end in one line (``imae: error: ...``, exit 2, no traceback) before anything is written. The
records go to docs/reliability.md through the ``fault_case`` fixture (conftest.py).
"""

from __future__ import annotations

import time

import pytest

from conftest import TINY_SETS, tiny_config
from imae.cli import main
from imae.config import build_config, resolve
from imae.config.evaluate import EvalConfig
from imae.config.finetune import FinetuneConfig
from imae.errors import ConfigError

pytestmark = pytest.mark.faults


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``imae ARGS`` in this process: (exit status, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_line(code: int, err: str, pattern: str) -> str:
    """The one error line of a refused command, which must contain ``pattern``."""
    lines = [x for x in err.splitlines() if x.startswith("imae: error:")]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and pattern in lines[0], err[-2000:]
    return lines[0]


def refused_pretrain(tmp_path, capsys, *args: str, preset: str = "digits-mae") -> str:
    """``imae pretrain`` with ``args`` must stop in one line and leave no run folder behind; returns the line."""
    out = tmp_path / "run"
    sets = [a for k, v in TINY_SETS.items() for a in ("--set", f"{k}={v}")]
    code, err = run_cli(["pretrain", "--preset", preset, "--output-dir", str(out), *sets, *args], capsys)
    assert not out.exists()
    return one_line(code, err, "")


def preset(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_a_negative_clip_grad_is_refused_in_both_loop_sections(tmp_path, capsys, fault_case):
    fault_case(injected="train.clip_grad=-1 (clip_grad_norm_ with a negative norm flips every gradient: loss 15 -> 83, "
                        "exit 0) and finetune.clip_grad=-1",
               expected="one line naming the key, exit 2, no run folder; 0 and null (no clipping) still accepted")
    line = refused_pretrain(tmp_path, capsys, "--set", "train.clip_grad=-1")
    assert "train.clip_grad must be a positive maximum gradient norm (or 0 or null: no clipping), got -1.0" in line
    with pytest.raises(ConfigError, match=r"finetune\.clip_grad must be a positive .* got -0\.5"):
        resolve({}, {"finetune.clip_grad": -0.5}, None, FinetuneConfig)
    for ok in (0, None, 1.0):
        assert build_config("digits-mae", {"train.clip_grad": ok}).train.clip_grad == ok
        assert resolve({}, {"finetune.clip_grad": ok}, None, FinetuneConfig).finetune.clip_grad == ok
    fault_case(outcome=f"'{line[len('imae: error: '):]}', exit 2; finetune the same", lost="nothing")


def test_mask_ratios_that_leave_no_masked_or_no_visible_patch_are_refused(tmp_path, capsys, fault_case):
    fault_case(injected="train.mask_ratio=0 (every loss exactly 0.0, exit 0) and 0.999 on digits' 64 patches (none "
                        "visible); 0.95 with 16 patches (model.patch_size=4)",
               expected="one line naming the patch count and the ratios that work, exit 2, no run folder")
    line = refused_pretrain(tmp_path, capsys, "--set", "train.mask_ratio=0")
    assert "train.mask_ratio=0 leaves no patch masked of the 64 patches of a 16-pixel image" in line
    assert "set train.mask_ratio above 0 and at most 0.984" in line
    line = refused_pretrain(tmp_path, capsys, "--set", "train.mask_ratio=0.999")
    assert "train.mask_ratio=0.999 leaves no patch visible of the 64 patches" in line
    with pytest.raises(ConfigError, match="0.95 leaves no patch visible of the 16 patches of a 16-pixel image in "
                                          "4-pixel patches; set train.mask_ratio to at most 0.937"):
        build_config("digits-mae", {"model.patch_size": 4, "train.mask_ratio": 0.95})
    # the edges: one visible patch, one masked patch
    assert build_config("digits-mae", {"train.mask_ratio": 0.984}).train.mask_ratio == 0.984
    assert build_config("digits-mae", {"train.mask_ratio": 0.01}).train.mask_ratio == 0.01
    fault_case(outcome="'train.mask_ratio=0 leaves no patch masked of the 64 patches of a 16-pixel image in 2-pixel "
                       "patches ...; set train.mask_ratio above 0 and at most 0.984', likewise 'no patch visible' "
                       "for 0.999; exit 2", lost="nothing")


def test_a_separability_mask_ratio_that_leaves_no_visible_patch_is_refused(tmp_path, capsys, fault_case):
    fault_case(injected="separability.mask_ratio=0.999 on a digits MAE (64 patches: none visible; a linalg.eigh "
                        "traceback)",
               expected="one line naming the model's patch count, exit 2, nothing written; 0 (unmasked) still valid")
    from imae.engine.train import pretrain
    from imae.eval.subject import load_subject, separability_defaults

    run = pretrain(tiny_config(tmp_path / "run", **{"train.epochs": 1, "train.max_steps": 1}))
    code, err = run_cli(["separability", str(run), "--set", "separability.mask_ratio=0.999", "--set",
                         "data.eval_per_class=12", "--device", "cpu"], capsys)
    line = one_line(code, err, "separability.mask_ratio=0.999 leaves no patch visible of the 64 patches of a "
                               "16-pixel image in 2-pixel patches; set separability.mask_ratio to at most 0.984")
    assert not list(run.rglob("separability*.json"))
    subject = load_subject(str(run))
    for ratio in (0.0, 0.5, 0.984):  # 0: the encoder sees every patch
        cfg = resolve({}, None, [f"separability.mask_ratio={ratio}"], EvalConfig)
        separability_defaults(cfg, subject)
    fault_case(outcome=f"'{line[len('imae: error: '):]}', exit 2; no separability result", lost="nothing")


RANGES = [
    (EvalConfig, "separability.max_images", -5, "separability.max_images must be at least 1 (or null: every "
                                                "evaluation image), got -5"),
    (EvalConfig, "separability.max_images", 0, "separability.max_images must be at least 1"),
    (EvalConfig, "separability.random_init_seed", -1, "separability.random_init_seed must be an integer from 0"),
    (EvalConfig, "separability.same_class_p", 2, "separability.same_class_p must lie in [0, 1]; got 2.0"),
    (EvalConfig, "data.num_workers", -1, "data.num_workers must be at least 0, got -1"),
    (EvalConfig, "data.img_size", 0, "data.img_size must be at least 1"),
    (EvalConfig, "num_heads", 0, "num_heads must be at least 1 (or null: the standard count for the width)"),
    (EvalConfig, "semantics.kmeans_restarts", 0, "semantics.kmeans_restarts must be at least 1, got 0"),
    (EvalConfig, "linprobe.blr", -0.1, "linprobe.blr must be positive, got -0.1"),
    (EvalConfig, "linprobe.warmup_epochs", -1, "linprobe.warmup_epochs must be at least 0"),
    (EvalConfig, "linprobe.crop_scale", [0.0, 1.0], "linprobe.crop_scale must satisfy 0 < lo <= hi <= 1"),
    (FinetuneConfig, "finetune.eval_every", 0, "finetune.eval_every must be at least 1, got 0"),
    (FinetuneConfig, "finetune.save_every", 0, "finetune.save_every must be at least 1, got 0"),
    (FinetuneConfig, "finetune.drop_path", 1.5, "finetune.drop_path must lie in [0, 1), got 1.5"),
    (FinetuneConfig, "finetune.mixup", -1, "finetune.mixup must be at least 0"),
    (FinetuneConfig, "finetune.reprob", 2, "finetune.reprob must lie in [0, 1], got 2.0"),
    (FinetuneConfig, "finetune.weight_decay", -0.05, "finetune.weight_decay must be at least 0"),
    (FinetuneConfig, "num_heads", -3, "num_heads must be at least 1"),
    (FinetuneConfig, "data.img_size", 0, "data.img_size must be at least 1"),
    (None, "data.max_per_class", 0, "data.max_per_class must be at least 1 (or null: all), got 0"),
    (None, "data.num_workers", -2, "data.num_workers must be at least 0, got -2"),
    (None, "model.depth", 0, "model.depth must be at least 1 (or null: the named model's), got 0"),
    (None, "model.patch_size", 0, "model.patch_size must be at least 1"),
    (None, "model.mlp_ratio", -4, "model.mlp_ratio must be positive"),
    (None, "train.save_every", -1, "train.save_every must be at least 1, got -1"),
    (None, "train.min_lr", -1e-6, "train.min_lr must be at least 0"),
    (None, "train.betas", [0.9, 1.0], "train.betas must both lie in [0, 1)"),
    (None, "data.crop_ratio", [0, 1], "data.crop_ratio must satisfy 0 < lo <= hi"),
    (None, "imae.w_distill_sub", -1, "imae.w_distill_sub must be at least 0"),
]  # (configuration: None for pre-training's, key, value, what the error says)


def test_every_count_and_size_key_is_range_checked(fault_case):
    fault_case(injected=f"{len(RANGES)} out-of-range counts and sizes across the evaluation, fine-tuning and "
                        f"pre-training configurations (separability.max_images=-5 was accepted and dropped the last 5 "
                        f"images; model.patch_size=0 gave a ZeroDivisionError)",
               expected="one line each naming the key and its range")
    for cls, key, value, message in RANGES:
        with pytest.raises(ConfigError) as e:
            if cls is None:
                build_config("digits-imae" if key.startswith("imae.") else "digits-mae", {key: value})
            else:
                resolve({}, {key: value}, None, cls)
        assert message in str(e.value), (key, str(e.value))
    fault_case(outcome=f"all {len(RANGES)} refused, e.g. 'separability.max_images must be at least 1 (or null: every "
                       f"evaluation image), got -5'", lost="nothing")


def test_the_defaults_and_every_bundled_preset_pass_the_range_checks():
    from imae.config import list_presets

    for name in list_presets():
        build_config(name)
    resolve({}, None, None, EvalConfig)
    resolve({}, None, None, FinetuneConfig)


def _bomb(levels: int) -> str:
    """A billion-laughs list: each level 9 aliases of the one below (9**levels strings once expanded)."""
    out = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    out += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(out)


def test_a_yaml_alias_bomb_is_refused_at_once_in_a_short_line(tmp_path, capsys, fault_case):
    fault_case(injected="a preset with an 8-level YAML alias bomb under train.epochs (13 s, 1.75 GB and a 351 MB "
                        "error line), the same bomb in a --set value, 5,000 nested lists, a 100 kB --set string",
               expected="each refused in one short line within a second, exit 2")
    bomb = preset(tmp_path, "bomb", f"base: digits-mae\n{_bomb(8)}\ntrain:\n  epochs: *l8\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 10000 values") as e:
        build_config(bomb)
    assert time.perf_counter() - start < 1.0 and len(str(e.value)) < 300
    line = refused_pretrain(tmp_path, capsys, preset=bomb)
    assert "expands to more than 10000 values" in line and len(line) < 300
    flow = "[&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)) + "]"
    line = refused_pretrain(tmp_path, capsys, "--set", f"train.epochs={flow}")
    assert "expands to more than 10000 values" in line and len(line) < 300
    deep = preset(tmp_path, "deep", "base: digits-mae\ntrain:\n  betas: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="expands to more than 10000 values or 32 levels"):
        build_config(deep)
    # a value that is merely long is cut in the message, never printed whole
    for item in ("train.epochs=" + "x" * 100_000, "train.betas=[" + ", ".join(["[1, 2]"] * 2000) + "]"):
        line = refused_pretrain(tmp_path, capsys, "--set", item)
        assert len(line) < 300 and "..." in line, line[:400]
    fault_case(outcome="'preset ... expands to more than 10000 values or 32 levels (YAML aliases or merge keys "
                       "repeating a value?) ...' in under a second, for the preset and for --set; long values cut to "
                       "120 characters; exit 2", lost="nothing")


def test_nonfinite_and_out_of_range_numbers_give_one_line(tmp_path, capsys, fault_case):
    fault_case(injected="--set train.blr=nan, train.blr=-1, seed=1e20 (as a preset's float and as an integer), "
                        "linprobe.l2=nan, train.lr=inf",
               expected="one line each naming the key and its range, exit 2, no run folder")
    line = refused_pretrain(tmp_path, capsys, "--set", "train.blr=nan")
    assert "train.blr must be a finite number, got 'nan'" in line
    assert "train.blr must be positive, got -1.0" in refused_pretrain(tmp_path, capsys, "--set", "train.blr=-1")
    assert "train.lr must be a finite number" in refused_pretrain(tmp_path, capsys, "--set", "train.lr=.inf")
    line = refused_pretrain(tmp_path, capsys, "--set", f"seed={10**20}")
    assert "seed must be an integer from 0 to 2^63 - 1, got 100000000000000000000" in line
    line = refused_pretrain(tmp_path, capsys, preset=preset(tmp_path, "seed", "base: digits-mae\nseed: 1.0e+20\n"))
    assert "seed must be an integer from 0 to 2^63 - 1" in line
    assert "seed must be an integer from 0" in refused_pretrain(tmp_path, capsys, "--seed", "-1")
    assert build_config("digits-mae", {"seed": 2**63 - 1}).seed == 2**63 - 1
    with pytest.raises(ConfigError, match="linprobe.l2 must be a finite number, got 'nan'"):
        resolve({}, None, ["linprobe.l2=nan"], EvalConfig)
    with pytest.raises(ConfigError, match="seed must be an integer from 0 to 2"):
        resolve({}, {"seed": 10**20}, None, FinetuneConfig)
    fault_case(outcome="'train.blr must be a finite number, got 'nan'', 'train.blr must be positive, got -1.0', "
                       "'seed must be an integer from 0 to 2^63 - 1, got 100000000000000000000', 'linprobe.l2 must be "
                       "a finite number'; exit 2", lost="nothing")


def test_a_preset_that_is_empty_a_list_or_a_scalar_is_refused(tmp_path, capsys, monkeypatch, fault_case):
    fault_case(injected="presets that are an empty file, only a comment, '{}', a list, a scalar (an empty one "
                        "trained the defaults; a list or scalar gave an AttributeError traceback)",
               expected="one line each, exit 2, no run folder")
    monkeypatch.chdir(tmp_path)
    cases = {"empty": ("", "is empty: it would train the defaults"),
             "comment": ("# to do\n", "is empty"),
             "braces": ("{}\n", "is empty"),
             "list": ("- train\n- data\n", "must be a mapping of settings ('key: value' lines), got a list"),
             "scalar": ("digits-mae\n", "must be a mapping of settings ('key: value' lines), got a string")}
    for name, (text, message) in cases.items():
        line = refused_pretrain(tmp_path, capsys, preset=preset(tmp_path, name, text))
        assert message in line, line
    assert not (tmp_path / "runs").exists()
    fault_case(outcome="'preset ... is empty: it would train the defaults; write its settings ...' and 'preset ... "
                       "must be a mapping of settings ('key: value' lines), got a list [...]'; exit 2", lost="nothing")


def test_a_section_that_is_not_a_mapping_is_refused_not_replaced(tmp_path, capsys, fault_case):
    fault_case(injected="a preset with 'train: 5' beside --set train.max_steps=1 (the preset's train section was "
                        "silently replaced), and 'train: 0' alone (read as the defaults)",
               expected="one line naming the section, exit 2; an empty 'train:' still keeps the defaults")
    five = preset(tmp_path, "five", "base: digits-mae\ntrain: 5\n")
    line = refused_pretrain(tmp_path, capsys, "--set", "train.max_steps=1", preset=five)
    assert "train must be a mapping ('key: value' lines) to set 'train." in line and "got a number 5" in line
    with pytest.raises(ConfigError, match=r"train must be a mapping \('key: value' lines\) to set 'train.max_steps' "
                                          r"in it, got a number 5; fix train in the preset or --set"):
        build_config(five, sets=["train.max_steps=1"])
    zero = preset(tmp_path, "zero", "base: digits-mae\ntrain: 0\n")
    with pytest.raises(ConfigError, match=r"train must be a mapping \('key: value' lines\), got a number 0"):
        build_config(zero)
    with pytest.raises(ConfigError, match="data must be a mapping"):
        resolve({"data": [1]}, {"data.img_size": 32}, None, EvalConfig)
    empty = preset(tmp_path, "blank", "base: digits-mae\ntrain:\n")
    assert build_config(empty, {"train.max_steps": 1}).train.max_steps == 1
    fault_case(outcome="'train must be a mapping ('key: value' lines) to set 'train.max_steps' in it, got a number 5; "
                       "fix train in the preset or --set', exit 2", lost="nothing")
