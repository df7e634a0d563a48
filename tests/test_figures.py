"""Figures: non-empty PNGs of the expected pixel size; attention and reconstructions match the model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import TINY
from eval_fixtures import digits_runs
from imae.viz.grid import grid_pixels


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return digits_runs(tmp_path_factory)


def _size(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        return im.size


def test_figures_command_writes_pngs_of_the_expected_size(runs, tmp_path, capsys):
    from test_cli import run_cli

    code, out, err = run_cli(["figures", str(runs["imae"]), str(runs["mae"]), "--output-dir", str(tmp_path),
                              "--set", "figures.images=2", "--set", "separability.alphas=[0.1,0.3,0.45]",
                              "--set", "figures.mask_ratios=[0.5,0.9]"], capsys)
    assert code == 0, err
    printed = {p.split("/")[-1] for p in out.split()}
    expected = {
        "mixtures-imae.png": grid_pixels(2, 2 + 3 * 3),  # sources + per alpha: mixture, sub, dom
        "mixtures-mae.png": grid_pixels(2, 2 + 2 * 3),  # sources + per alpha: mixture, reconstruction
        "mask-ratios-imae.png": grid_pixels(2, 1 + 2 * 2),
        "mask-ratios-mae.png": grid_pixels(2, 1 + 2 * 2),
        "ablation-grid.png": grid_pixels(2, 3 + 2 + 1),  # sources, mixture; i-MAE sub + dom; MAE rec
        "attention-imae.png": grid_pixels(2, 1 + 2),  # image + 2 heads
        "attention-mae.png": grid_pixels(2, 1 + 2),
        "weights.png": (800, 400),
    }
    assert printed == set(expected)
    for name, size in expected.items():
        assert _size(tmp_path / name) == size, name


def test_default_figure_folder_is_inside_the_runs_eval_folder(runs, capsys):
    from test_cli import run_cli

    code, _, err = run_cli(["figures", str(runs["mae"]), "--set", "figures.images=1",
                            "--set", "separability.alphas=[0.3]", "--set", "figures.mask_ratios=[0.75]"], capsys)
    assert code == 0, err
    assert _size(runs["mae"] / "eval" / "figures" / "mixtures-mae.png") == grid_pixels(1, 2 + 2)


def test_attention_from_qkv_weights_reproduces_timms_attention_output():
    from imae.models import create_model
    from imae.viz.attention import attention_weights

    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch4", **TINY).eval()
    blk = model.blocks[1]
    x = torch.randn(3, 65, TINY["embed_dim"])
    probs = attention_weights(blk, x)  # [3, heads, 65, 65]
    assert torch.allclose(probs.sum(-1), torch.ones(3, TINY["num_heads"], 65), atol=1e-5)
    attn = blk.attn
    v = attn.qkv(blk.norm1(x)).reshape(3, 65, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    mine = attn.proj((probs @ v).transpose(1, 2).reshape(3, 65, -1))
    with torch.no_grad():
        assert torch.allclose(mine, attn(blk.norm1(x)), atol=1e-5)


def test_mixture_reconstructions_are_the_branch_predictions():
    from imae.data.mixing import mix
    from imae.models import create_model
    from imae.viz.reconstruct import reconstruct_mixture

    torch.manual_seed(0)
    model = create_model("imae_vit_tiny_patch4", **TINY, distill=False).eval()
    g = torch.Generator().manual_seed(1)
    xs, xd = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    noise = torch.rand(2, 64, generator=g)
    out = reconstruct_mixture(model, xs, xd, 0.3, 0.75, noise)
    with torch.no_grad():
        ref = model(xs, xd, 0.3, mask_ratio=0.75, noise=noise)
    assert torch.allclose(out["sub"], model.unpatchify(ref["pred_sub"]), atol=1e-5)
    assert torch.allclose(out["dom"], model.unpatchify(ref["pred_dom"]), atol=1e-5)
    assert torch.allclose(out["mixture"], mix(xs, xd, 0.3))
    removed = model.unpatchify(ref["mask"].unsqueeze(-1).expand(-1, -1, 48)).bool()
    assert bool((out["masked"][removed] == 0).all())
