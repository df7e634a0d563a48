"""Weights in and out: Hugging Face ViTMAE folders, timm ViTs, official-layout .pth and .safetensors files.

Hugging Face models are built here from a small ViTMAEConfig with random weights (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import TINY, tiny_cli_sets, tiny_config, tiny_mae
from imae import checkpoints as ckpt
from imae.errors import CheckpointError
from imae.eval.subject import load_subject
from imae.models.loading import model_from_checkpoint
from test_cli import run_cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=32,
             patch_size=4, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
             decoder_intermediate_size=128)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Add noise to every parameter and buffer-like weight, so that each one (biases, norms, position
    embeddings, mask token) changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_folder(tmp_path, cls: str = "ViTMAEForPreTraining", name: str = "hf", **over):
    config = transformers.ViTMAEConfig(**{**SMALL, **over})
    torch.manual_seed(0)
    model = perturb(getattr(transformers, cls)(config))
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


def one_line_error(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("imae: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def save_ours(model, path, **extra) -> None:
    torch.save({"model": model.state_dict(), "kind": model.kind, "arch": model.arch.to_dict(), **extra}, path)


# ----------------------------------------------------------------------------------------------
# Hugging Face in


@pytest.mark.parametrize("eps", [1e-12, 1e-6])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_hf_folder_gives_transformers_loss_pred_and_mask(tmp_path, eps, norm_pix):
    hf, folder = hf_folder(tmp_path, layer_norm_eps=eps, norm_pix_loss=norm_pix)
    ours = model_from_checkpoint(ckpt.load(folder)).eval()
    assert ours.arch.layer_norm_eps == eps and ours.arch.norm_pix_loss == norm_pix
    assert {m.eps for m in ours.modules() if isinstance(m, nn.LayerNorm)} == {eps}
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    with torch.no_grad():
        want = hf(pixel_values=x, noise=noise)
        got = ours(x, mask_ratio=hf.config.mask_ratio, noise=noise)
    assert torch.equal(got["mask"], want.mask)
    assert torch.allclose(got["pred"], want.logits, atol=1e-5)
    assert abs(got["loss"].item() - want.loss.item()) < 1e-5


def test_every_transformers_naming_gives_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from imae.checkpoints.hf import to_ours

    hf, folder = hf_folder(tmp_path)
    saved = load_file(folder / "model.safetensors")  # transformers 5 saves decoder.decoder_encoder.layer.N
    v4 = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v for k, v in saved.items()}
    in_memory = hf.state_dict()  # transformers 5: vit.layers.N.attention.q_proj, mlp.fc1, ...
    assert any(".q_proj." in k for k in in_memory) and any("decoder_encoder.layer" in k for k in saved)
    want = ckpt.load(folder)["model"]
    for sd in (to_ours(saved), to_ours(v4), to_ours(in_memory)):
        assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)
    # the same weights sharded (model.safetensors.index.json) and as a pytorch_model.bin
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    shutil.copy(folder / "config.json", tmp_path / "bin")
    torch.save(v4, tmp_path / "bin" / "pytorch_model.bin")
    for other in (tmp_path / "sharded", tmp_path / "bin"):
        sd = ckpt.load(other)["model"]
        assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)


def test_encoder_only_folder_and_hub_cache_snapshot_give_transformers_hidden_states(tmp_path, capsys):
    hf, folder = hf_folder(tmp_path, cls="ViTMAEModel", mask_ratio=0.0)
    # the layout of ~/.cache/huggingface/hub: models--org--name/{refs/main, snapshots/<revision>/}
    entry = tmp_path / "models--org--tiny-mae"
    shutil.copytree(folder, entry / "snapshots" / "abc123")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # noise 0, 1, 2, ... keeps every patch in raster order
        want = hf(pixel_values=x, noise=torch.arange(64.0).expand(2, -1)).last_hidden_state
    for source in (folder, entry):
        ck = ckpt.load(source)
        assert ck.format == "hf" and not ck.has_decoder  # the model's decoder stays untrained
        ours = model_from_checkpoint(ck).eval()
        assert torch.allclose(ours.forward_features(x), want, atol=1e-5)
    # evaluation results never go into the hub cache
    assert load_subject(entry).default_output_dir == Path("runs") / "org--tiny-mae-eval"
    # and back out: an encoder-only checkpoint becomes a ViTMAEModel folder
    code, _, err = run_cli(["export", str(entry), "--to", "hf", "--output", str(tmp_path / "again")], capsys)
    assert code == 0, err
    again, info = transformers.ViTMAEModel.from_pretrained(tmp_path / "again", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        got = again.eval()(pixel_values=x, noise=torch.arange(64.0).expand(2, -1)).last_hidden_state
    assert torch.equal(got, want)


def test_hf_config_that_does_not_fit_its_weights_names_the_keys(tmp_path):
    _, folder = hf_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3, "decoder_hidden_size": 64,
                                                    "decoder_intermediate_size": 256}))
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(ckpt.load(folder))
    msg = str(e.value)
    # refused before the model is built (models.loading.check_shapes), naming what differs
    assert "its weights do not match the model its configuration describes" in msg
    assert "decoder_embed.weight" in msg and "2 encoder blocks (the configuration: 3)" in msg


# the digits model of conftest.TINY_SETS (16 px, patch 2, width 32, one block each side)
DIGITS = dict(SMALL, hidden_size=32, num_hidden_layers=1, intermediate_size=128, image_size=16, patch_size=2,
              decoder_intermediate_size=128)


def test_hf_folder_as_teacher_and_init_from_of_an_imae(tmp_path, capsys):
    from safetensors.torch import load_file

    from imae.checkpoints.hf import to_ours
    from imae.engine.objectives.imae import IMAEObjective

    _, folder = hf_folder(tmp_path, **DIGITS)
    hf_sd = to_ours(load_file(folder / "model.safetensors"))
    objective = IMAEObjective(tiny_config(tmp_path / "run", "digits-imae", **{"imae.teacher": str(folder)}))
    teacher = objective.model.teacher.state_dict()
    assert objective.model.teacher.arch.layer_norm_eps == 1e-12
    assert all(torch.equal(teacher[k], hf_sd[k]) for k in hf_sd)
    objective.load_init(ckpt.load(folder))
    student = objective.model.state_dict()
    assert torch.equal(student["decoder_embed_dom.weight"], hf_sd["decoder_embed.weight"])
    assert all(torch.equal(student[k], hf_sd[k]) for k in hf_sd if not k.startswith("decoder_embed"))
    assert "was trained with layer_norm_eps 1e-12, this model uses 1e-06" in capsys.readouterr().err


def test_evaluation_command_takes_an_hf_folder(tmp_path, capsys):
    from eval_fixtures import fast_sets

    _, folder = hf_folder(tmp_path, **DIGITS)
    code, out, err = run_cli(["knn", str(folder), "--preset", "digits-mae", *fast_sets()], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "hf-eval" / "knn.json").read_text())
    assert rec["checkpoint"]["arch"]["layer_norm_eps"] == 1e-12 and rec["checkpoint"]["path"] == str(folder)
    code, _, err = run_cli(["separability", str(folder), "--preset", "digits-mae", *fast_sets(),
                            "--set", "separability.alphas=[0.3]"], capsys)
    assert code == 0, err  # the folder is its own reference, identified by the hash of its files
    ref = json.loads((tmp_path / "hf-eval" / "separability.json").read_text())["results"]["reference"]
    assert ref["is_self"] and len(ref["sha256"]) == 64


# ----------------------------------------------------------------------------------------------
# out: Hugging Face, timm, official .pth


def test_export_hf_loads_in_transformers_equal_outputs_and_round_trips_bit_identically(tmp_path, capsys):
    torch.manual_seed(0)
    ours = perturb(tiny_mae(norm_pix_loss=True, layer_norm_eps=1e-12))
    save_ours(ours, tmp_path / "ours.pth")
    code, out, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", "hf", "--output",
                              str(tmp_path / "hf")], capsys)
    assert code == 0, err
    hf, info = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    assert hf.config.layer_norm_eps == 1e-12 and hf.config.norm_pix_loss
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    with torch.no_grad():
        want, got = ours(x, noise=noise), hf(pixel_values=x, noise=noise)
    assert torch.equal(got.mask, want["mask"])
    assert torch.allclose(got.logits, want["pred"], atol=1e-5) and abs(got.loss.item() - want["loss"].item()) < 1e-5
    back = model_from_checkpoint(ckpt.load(tmp_path / "hf"))
    assert back.arch == ours.arch
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("eps", [1e-6, 1e-12])
def test_export_timm_loads_strictly_with_the_same_cls_features(tmp_path, capsys, eps):
    torch.manual_seed(0)
    ours = perturb(tiny_mae(layer_norm_eps=eps))
    save_ours(ours, tmp_path / "ours.pth")
    code, out, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", "timm", "--output",
                              str(tmp_path / "vit.safetensors")], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "vit.timm.json").read_text())
    assert info["python"] in out and info["kwargs"]["img_size"] == 32 and info["kwargs"]["patch_size"] == 4
    scope: dict = {}
    exec(info["python"], scope)  # the printed call, as a user would paste it; load_state_dict is strict
    vit = scope["model"].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(x)[:, 0], ours.forward_features(x)[:, 0], atol=1e-5)


def test_export_mae_and_hf_of_an_imae_hold_its_dominant_branch_as_decoder_embed(tmp_path, capsys):
    from imae.models import create_model
    from imae.models.mae import MaskedAutoencoder

    torch.manual_seed(0)
    student = perturb(create_model("imae_vit_tiny_patch4", **{**TINY, "distill": False}))
    save_ours(student, tmp_path / "imae.pth", imae_options={"distill": False})
    want = student.mae_state_dict()
    assert not torch.equal(want["decoder_embed.weight"], student.state_dict()["decoder_embed_sub.weight"])
    for to, out in (("mae", tmp_path / "mae.pth"), ("hf", tmp_path / "hf")):
        code, _, err = run_cli(["export", str(tmp_path / "imae.pth"), "--to", to, "--output", str(out)], capsys)
        assert code == 0, err
    mae = MaskedAutoencoder(student.arch)
    mae.load_state_dict(torch.load(tmp_path / "mae.pth", weights_only=True)["model"], strict=True)
    back = model_from_checkpoint(ckpt.load(tmp_path / "hf")).state_dict()
    for sd in (mae.state_dict(), back):
        assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)


def test_export_refuses_an_existing_output_and_a_wrong_suffix(tmp_path, capsys):
    save_ours(tiny_mae(), tmp_path / "ours.pth")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    code, _, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", "hf", "--output", str(tmp_path / "taken")],
                           capsys)
    assert "already exists; remove it or choose another --output" in one_line_error(code, err)
    code, _, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", "timm", "--output", str(tmp_path / "v.pt")],
                           capsys)
    assert "--to timm writes a .safetensors file" in one_line_error(code, err)


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit status 2


def test_hf_folder_of_another_model_type_is_refused(tmp_path, capsys):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=4)
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    code, _, err = run_cli(["export", str(tmp_path / "vit"), "--to", "mae", "--output", str(tmp_path / "o.pth")],
                           capsys)
    assert "describes a Hugging Face 'vit' model (ViTModel), not ViTMAE" in one_line_error(code, err)


def test_hf_folder_without_config_json_is_refused(tmp_path, capsys):
    _, folder = hf_folder(tmp_path)
    (folder / "config.json").unlink()
    code, _, err = run_cli(["knn", str(folder)], capsys)
    assert "has no config.json" in one_line_error(code, err)


def test_safetensors_of_another_architecture_is_refused(tmp_path, capsys):
    from imae.checkpoints.safetensors_io import write

    write(tiny_mae().state_dict(), tmp_path / "other.safetensors")  # 32 px, width 64: not the digits model
    code, _, err = run_cli(["pretrain", "--output-dir", str(tmp_path / "run"), "--init-from",
                            str(tmp_path / "other.safetensors"), *tiny_cli_sets()], capsys)
    line = one_line_error(code, err)
    assert "other.safetensors does not fit this model" in line and "shape mismatch(es)" in line
    write({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.safetensors")
    code, _, err = run_cli(["export", str(tmp_path / "resnet.safetensors"), "--to", "mae", "--output",
                            str(tmp_path / "o.pth")], capsys)
    assert "not an MAE/ViT state dict" in one_line_error(code, err)


def test_missing_safetensors_names_the_extra(tmp_path, capsys, monkeypatch):
    save_ours(tiny_mae(), tmp_path / "ours.pth")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    code, _, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", "hf", "--output", str(tmp_path / "hf")],
                           capsys)
    assert "needs the optional package safetensors: pip install -e '.[hf]'" in one_line_error(code, err)
