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
    assert torch.allclose(out["sub_pred"], model.unpatchify(ref["pred_sub"]), atol=1e-5)
    assert torch.allclose(out["dom_pred"], model.unpatchify(ref["pred_dom"]), atol=1e-5)
    assert torch.allclose(out["mixture"], mix(xs, xd, 0.3))
    removed = model.unpatchify(ref["mask"].unsqueeze(-1).expand(-1, -1, 48)).bool()
    assert bool((out["masked"][removed] == 0).all())
    # shown as the MAE demo: the prediction at removed patches, the mixture (the input) at visible ones
    for k in ("sub", "dom"):
        assert torch.equal(out[k][removed], out[f"{k}_pred"][removed])
        assert torch.equal(out[k][~removed], out["mixture"][~removed])
        assert not torch.allclose(out[k][~removed], out[f"{k}_pred"][~removed])
    assert torch.equal(out["removed"].bool().expand(-1, 3, -1, -1), removed)


def _colours(path):
    """Pixels [H, W, 3] of a PNG as ints."""
    import numpy as np

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_digits_figures_are_grey_with_coloured_mask_marks_only(runs, tmp_path, capsys):
    """Greyscale data stays grey: the only coloured pixels are the removed-patch fill and the outline of
    visible patches (before, raw predictions at visible patches put magenta/green speckles there)."""
    import json

    import numpy as np

    from imae.viz.grid import REMOVED_RGB, VISIBLE_RGB
    from test_cli import run_cli

    code, _, err = run_cli(["figures", str(runs["imae"]), str(runs["mae"]), "--output-dir", str(tmp_path),
                            "--set", "figures.images=2", "--set", "separability.alphas=[0.3]",
                            "--set", "figures.mask_ratios=[0.5]"], capsys)
    assert code == 0, err
    for name in ("mixtures-imae.png", "mask-ratios-mae.png", "ablation-grid.png"):
        px = _colours(tmp_path / name)
        coloured = (px.max(-1) - px.min(-1)) > 6
        marks = np.zeros(coloured.shape, bool)
        for rgb in (REMOVED_RGB, VISIBLE_RGB):
            marks |= (np.abs(px - np.array(rgb) * 255).max(-1) <= 3)
        assert marks.sum() > 100, name  # the marks are drawn
        assert (coloured & ~marks).sum() < 0.001 * coloured.size, name  # and nothing else is coloured

    def has_fill(name):
        return (np.abs(_colours(tmp_path / name) - np.array(REMOVED_RGB) * 255).max(-1) <= 3).sum()

    assert has_fill("mixtures-imae.png") > 0 and has_fill("ablation-grid.png") == 0  # masked vs unmasked mixture
    manifest = {e["file"]: e for e in json.loads((tmp_path / "figures.json").read_text())["figures"]}
    assert manifest["mixtures-mae.png"]["run"] == "mae" and manifest["ablation-grid.png"]["run"] is None
    assert "masked" in manifest["mixtures-imae.png"]["caption"] and ".png" not in manifest["weights.png"]["caption"]


def test_outline_marks_the_edge_between_visible_and_removed_patches():
    import numpy as np

    from imae.viz.grid import VISIBLE_RGB, _outline

    tile = np.zeros((8, 8, 3))
    visible = np.array([[True, False], [False, False]])  # the top-left patch of a 2 x 2 grid
    _outline(tile, visible)
    drawn = (tile == VISIBLE_RGB).all(-1)
    assert drawn[0, :4].all() and drawn[:4, 0].all() and drawn[3, :4].all() and drawn[:4, 3].all()
    assert not drawn[4:].any() and not drawn[:, 4:].any() and not drawn[1:3, 1:3].any()


def test_full_disk_while_drawing_is_one_line_and_keeps_the_earlier_pngs(runs, tmp_path, capsys, monkeypatch):
    from conftest import disk_full_after_half
    from test_cli import assert_one_line_error, run_cli

    args = ["figures", str(runs["mae"]), "--output-dir", str(tmp_path), "--set", "figures.images=1",
            "--set", "separability.alphas=[0.3]", "--set", "figures.mask_ratios=[0.75]"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    disk_full_after_half(monkeypatch)  # every file is written by imae.atomic
    code, _, err = run_cli(args + ["--set", "seed=5"], capsys)  # other images: different PNGs if written
    assert_one_line_error(code, err, "No space left on device")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no truncated file, no temp file
