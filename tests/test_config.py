"""Configuration: presets, overrides, type checks, the resolved file."""

from __future__ import annotations

import re

import pytest

from imae.config import Config, build_config, list_presets, load_config, save_config
from imae.errors import ConfigError
from imae.models.registry import resolve_arch


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_resolves_to_a_valid_config_and_model(name):
    cfg = build_config(name)
    assert cfg.preset == name
    over = cfg.model.overrides()
    if cfg.data.img_size:
        over.setdefault("img_size", cfg.data.img_size)
    kind, arch = resolve_arch(cfg.model.name, **over)
    assert kind == ("imae" if cfg.method == "imae" else "mae")


def test_required_presets_exist():
    assert {"digits-mae", "cifar10-mae-tiny", "cifar100-mae-tiny", "tinyimagenet-mae-small",
            "imagenet-mae-base"} <= set(list_presets())


def test_base_presets_merge_and_sets_override_with_types():
    cfg = build_config("cifar100-mae-tiny", {"train.epochs": 3},
                       ["train.blr=2e-4", "data.crop_scale=[0.3, 1]", "train.clip_grad=null"])
    assert cfg.data.dataset == "cifar100" and cfg.model.name == "mae_vit_tiny_patch4"  # from the base preset
    assert cfg.train.epochs == 3 and cfg.train.blr == 2e-4 and cfg.data.crop_scale == (0.3, 1.0)
    assert cfg.train.clip_grad is None


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = build_config("imagenet-mae-base", {"seed": 7})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", Config) == cfg


@pytest.mark.parametrize("item,msg", [
    ("train.mask_ratio=1.0", "train.mask_ratio must be in [0, 1)"),
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("method=simclr", "method must be 'mae' or 'imae'"),
    ("train.betas=[0.9]", "train.betas must be a list of 2 values"),
    ("data.hflip=maybe", "data.hflip must be true or false"),
    ("nonsense", "--set expects key=value"),
])
def test_bad_values_are_config_errors(item, msg):
    with pytest.raises(ConfigError) as e:
        build_config("digits-mae", sets=[item])
    assert msg in str(e.value)


def test_defaults_mean_something():
    c = Config()
    assert c.train.mask_ratio == 0.75 and c.train.betas == (0.9, 0.95) and c.train.weight_decay == 0.05
    assert c.data.crop_scale == (0.2, 1.0)


def test_imagenet_imae_recipe_targets_agree_with_the_checkpoint_it_names():
    """The released recipe starts student and teacher from mae_pretrain_vit_base_full.pth, trained on
    normalised pixels: the preset must train towards normalised pixels and name that checkpoint."""
    from imae.config import preset_path

    cfg = build_config("imagenet-imae-base")
    assert cfg.model.norm_pix_loss is True and cfg.imae.same_class_p == 1.0
    run_line = [ln for ln in preset_path("imagenet-imae-base").read_text().splitlines() if "--teacher" in ln]
    assert run_line and run_line[0].count("mae_pretrain_vit_base_full.pth") == 2


def test_both_loop_sections_are_checked_by_one_function_that_names_its_section():
    from imae.config import resolve
    from imae.config.finetune import FinetuneConfig

    for key, value, msg in [("epochs", 0, "epochs must be at least 1, got 0"),
                            ("checkpoint_format", "npz", "checkpoint_format must be 'pth' or 'safetensors'"),
                            ("max_steps", 0, "max_steps must be at least 1 (or null: no limit), got 0"),
                            ("warmup_epochs", -1, "warmup_epochs must be at least 0, got -1.0"),
                            ("keep_last", -1, "keep_last must be at least 0, got -1")]:
        with pytest.raises(ConfigError, match=re.escape(f"train.{msg}")):
            build_config("digits-mae", {f"train.{key}": value})
        with pytest.raises(ConfigError, match=re.escape(f"finetune.{msg}")):
            resolve({}, {f"finetune.{key}": value}, None, FinetuneConfig)


def test_finetune_keeps_its_own_loop_defaults_and_gains_the_loop_keys_of_train():
    from dataclasses import asdict

    from imae.config.finetune import FinetuneParams

    p = asdict(FinetuneParams())
    assert {k: p[k] for k in ("epochs", "warmup_epochs", "batch_size", "accum_iter", "blr", "min_lr", "weight_decay",
                              "betas", "clip_grad", "amp", "save_every", "log_every", "max_steps")} == {
        "epochs": 100, "warmup_epochs": 5.0, "batch_size": 128, "accum_iter": 1, "blr": 5e-4, "min_lr": 1e-6,
        "weight_decay": 0.05, "betas": (0.9, 0.999), "clip_grad": None, "amp": True, "save_every": 10,
        "log_every": 20, "max_steps": None}
    assert {k: p[k] for k in ("compile", "save_every_steps", "keep_last", "skip_nonfinite", "checkpoint_format")} == {
        "compile": False, "save_every_steps": 0, "keep_last": 0, "skip_nonfinite": 0, "checkpoint_format": "pth"}
