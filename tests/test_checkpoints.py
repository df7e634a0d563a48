"""Every checkpoint source reads as one typed Checkpoint, and files in the layout imae has always written load
unchanged (the layouts are written here by hand, as torch.save of plain dicts, not by the code under test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_mae
from imae import checkpoints
from imae.checkpoints import Checkpoint
from imae.checksum import tensor_checksum
from imae.models import create_model
from imae.models.imae import IMAE
from imae.models.loading import model_from_checkpoint


def _training_layout(model, kind: str, **extra) -> dict:
    """A training checkpoint as imae 0.1.0 writes it (checkpoints/files.py's docstring)."""
    sd = model.state_dict()
    opt = torch.optim.AdamW(model.parameters()).state_dict()
    return {"model": sd, "optimizer": opt, "epoch": 1, "step_in_epoch": 0, "global_step": 12,
            "config": {"method": kind, "train": {"epochs": 2, "mask_ratio": 0.75}}, "kind": kind,
            "arch": model.arch.to_dict(), "scaler": None, "rng": {}, "metrics": {"loss": 1.0}, "version": "0.1.0",
            "checksum": {"model": tensor_checksum(sd), "optimizer": tensor_checksum(opt)}, **extra}


def _same_weights(model, other) -> None:
    a, b = model.state_dict(), other.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_old_training_checkpoint_and_its_run_directory_load_unchanged(tmp_path):
    mae = tiny_mae()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_training_layout(mae, "mae"), run / "checkpoint-last.pth")
    for source in (run, run / "checkpoint-last.pth"):
        ck = checkpoints.load(source)
        assert isinstance(ck, Checkpoint) and ck.path == run / "checkpoint-last.pth" and ck.format == "pth"
        assert ck.kind == "mae" and ck.has_decoder and ck.arch == mae.arch.to_dict() and not ck.skipped
        assert ck.config["train"]["epochs"] == 2 and ck["epoch"] == 1 and "optimizer" in ck
        assert not any(k.startswith("_") for k in ck)  # the file's own entries, nothing added
        _same_weights(mae, model_from_checkpoint(ck))


def test_an_old_imae_checkpoint_rebuilds_its_imae(tmp_path):
    student = create_model("imae_vit_tiny_patch4", **TINY, distill=False)
    torch.save(_training_layout(student, "imae", imae_options={"branches": "two", "distill": False}),
               tmp_path / "imae.pth")
    ck = checkpoints.load(tmp_path / "imae.pth")
    assert ck.kind == "imae" and ck.imae_options["branches"] == "two"
    model = model_from_checkpoint(ck)
    assert isinstance(model, IMAE) and not model.options.distill
    _same_weights(student, model)


def test_official_bare_and_encoder_only_files_load_with_their_kind_and_decoder(tmp_path):
    mae = tiny_mae()
    sd = mae.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "official.pth")
    torch.save(sd, tmp_path / "bare.pth")
    encoder = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder}, tmp_path / "encoder.pth")
    for name in ("official", "bare"):
        ck = checkpoints.load(tmp_path / f"{name}.pth")
        assert ck.kind == "mae" and ck.has_decoder and ck.arch is None and ck.config is None
        _same_weights(mae, model_from_checkpoint(ck, num_heads=2))  # a 64-wide encoder has no standard count
    ck = checkpoints.load(tmp_path / "encoder.pth")
    assert not ck.has_decoder
    model = model_from_checkpoint(ck, num_heads=2)
    assert torch.equal(model.state_dict()["pos_embed"], sd["pos_embed"])
    # a stored dict is still accepted where a Checkpoint is expected (tests and notebooks build them by hand)
    _same_weights(mae, model_from_checkpoint({"model": sd, "arch": mae.arch.to_dict()}))


def test_safetensors_standalone_split_and_hf_sources_read_as_checkpoints(tmp_path):
    pytest.importorskip("safetensors")
    from imae.checkpoints import hf, safetensors_io
    from imae.checkpoints.files import save_checkpoint

    mae = tiny_mae()
    safetensors_io.write(mae.state_dict(), tmp_path / "w.safetensors", {"kind": "mae", "arch": mae.arch.to_dict()})
    ck = checkpoints.load(tmp_path / "w.safetensors")
    assert ck.format == "safetensors" and ck.arch == mae.arch.to_dict() and ck.kind == "mae"
    _same_weights(mae, model_from_checkpoint(ck))

    (tmp_path / "run").mkdir()
    save_checkpoint(_training_layout(mae, "mae"), tmp_path / "run" / "checkpoint-last.pth", fmt="safetensors")
    ck = checkpoints.load(tmp_path / "run")
    assert ck.format == "pth+safetensors" and ck["epoch"] == 1
    _same_weights(mae, model_from_checkpoint(ck))

    hf.save_folder(mae.state_dict(), mae.arch.to_dict(), tmp_path / "hf", mask_ratio=0.6)
    ck = checkpoints.load(tmp_path / "hf")
    assert ck.format == "hf" and ck.path == tmp_path / "hf" and ck.has_decoder and ck["mask_ratio"] == 0.6
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["hidden_size"] == ck.arch["embed_dim"]
    _same_weights(mae, model_from_checkpoint(ck))


def test_checkpoints_name_no_magic_keys():
    """The source a checkpoint came from is its ``path`` attribute, never a ``"_path"`` entry."""
    src = Path(checkpoints.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if any(f'"{k}"' in p.read_text() or f"'{k}'" in p.read_text()
                        for k in ("_path", "_format", "_weights", "_skipped"))]
    assert offenders == []
