"""The Python API of docs/python.md: its example runs as written, on a run directory of a tiny pre-training."""

from __future__ import annotations

import re

import torch

from conftest import REPO, tiny_config
from imae.engine.train import pretrain


def _example(doc: str) -> str:
    return re.search(r"```python\n(.*?)```", doc, re.S).group(1)


def test_the_documented_python_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pretrain(tiny_config(tmp_path / "runs" / "c10-imae", **{"train.epochs": 1}))
    scope: dict = {}
    exec(compile(_example((REPO / "docs" / "python.md").read_text()), "docs/python.md", "exec"), scope)
    model, tokens = scope["model"], scope["tokens"]
    assert not model.training and next(model.parameters()).device.type == "cpu"
    arch = model.arch
    assert tokens.shape == (8, 1 + arch.num_patches, arch.embed_dim) and scope["features"].shape == (8, arch.embed_dim)
    # the digits run's own pixel statistics, and its 16 px images: the 32 px example images are resized
    assert scope["x"].shape[-1] == arch.img_size == 16
    assert model.normalization[0][0] == 0.3053
    assert scope["mae"].arch.embed_dim == 192 and scope["mae"].training


def test_load_gives_the_checkpoints_model_and_preprocess_matches_the_data_pipeline(tmp_path):
    import imae
    from imae.data.augment import normalize
    from imae.data.datasets import NORMALIZATION

    run = pretrain(tiny_config(tmp_path / "run", **{"train.epochs": 1}))
    model = imae.load(run)
    other = imae.load(run / "checkpoint-last.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    u8 = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(model.preprocess(u8), normalize(u8, *NORMALIZATION["digits"]))
    assert model.preprocess(u8[0]).shape == (1, 3, 16, 16)
    assert imae.create_model("mae_vit_micro_patch2").normalization == NORMALIZATION["imagefolder"]
    assert "imae_vit_tiny_patch4" in imae.list_models()


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    # the README's one ```python block, under "## Python", on a tiny run at the path it names
    monkeypatch.chdir(tmp_path)
    pretrain(tiny_config(tmp_path / "runs" / "c10-imae", **{"train.epochs": 1}))
    readme = (REPO / "README.md").read_text()
    block = _example(readme[readme.index("\n## Python\n"):])
    assert re.findall(r"\bimae\.(\w+)", block) == ["load", "create_model"]  # only the top-level names
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    arch = scope["model"].arch
    assert scope["tokens"].shape == (8, 1 + arch.num_patches, arch.embed_dim)
    assert scope["mae"].arch.embed_dim == 192
