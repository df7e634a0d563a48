"""The vanilla MAE against reference computations and the official checkpoint layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_mae
from imae.checkpoints.state import load_state_dict
from imae.errors import CheckpointError, ConfigError
from imae.models import create_model
from imae.models.pos_embed import sincos_2d


def test_patchify_matches_explicit_patches_and_round_trips():
    m = tiny_mae()
    x = torch.randn(2, 3, 32, 32)
    patches = m.patchify(x)
    assert patches.shape == (2, 64, 4 * 4 * 3)
    # patch k = (row k // 8, col k % 8); pixels in (row, col, channel) order as the official MAE
    for k in (0, 9, 63):
        r, c = divmod(k, 8)
        ref = x[:, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].permute(0, 2, 3, 1).reshape(2, -1)
        assert torch.equal(patches[:, k], ref)
    assert torch.equal(m.unpatchify(patches), x)


def test_masking_with_noise_keeps_exactly_the_lowest_noise_patches():
    m = tiny_mae()
    n, length, ratio = 3, 64, 0.75
    noise = torch.rand(n, length)
    tokens = torch.arange(length).float().view(1, length, 1).expand(n, -1, 5)
    kept, mask, ids_restore = m.random_masking(tokens, ratio, noise)
    len_keep = int(length * (1 - ratio))
    assert kept.shape == (n, len_keep, 5) and mask.shape == (n, length)
    for i in range(n):
        lowest = torch.argsort(noise[i])[:len_keep]
        assert torch.equal(kept[i, :, 0].long(), lowest)  # in ascending-noise order
        expect = torch.ones(length)
        expect[lowest] = 0
        assert torch.equal(mask[i], expect)
        assert torch.equal(torch.argsort(torch.argsort(noise[i])), ids_restore[i])


def test_loss_equals_direct_masked_patch_mse(cifar_batch):
    m = tiny_mae()
    x = cifar_batch[0][:4]
    noise = torch.rand(4, 64)
    out = m(x, mask_ratio=0.75, noise=noise)
    target = m.patchify(x)
    total, count = 0.0, 0
    for i in range(4):
        for k in range(64):
            if out["mask"][i, k] == 1:
                total += ((out["pred"][i, k] - target[i, k]) ** 2).mean().item()
                count += 1
    assert count == 4 * 48
    assert out["loss"].item() == pytest.approx(total / count, rel=1e-5)


def test_norm_pix_loss_normalises_each_target_patch(cifar_batch):
    m = tiny_mae(norm_pix_loss=True)
    plain = tiny_mae(norm_pix_loss=False)
    x = cifar_batch[0][:2]
    t = m.target(x)
    raw = plain.target(x)
    p = raw[0, 5]
    ref = (p - p.mean()) / (p.var(unbiased=True) + 1e-6) ** 0.5
    assert torch.allclose(t[0, 5], ref, atol=1e-6)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 64), atol=1e-5)
    assert not torch.allclose(t, raw)
    plain.load_state_dict(m.state_dict())
    noise = torch.rand(2, 64)
    assert m(x, noise=noise)["loss"].item() != pytest.approx(plain(x, noise=noise)["loss"].item())


def test_reconstruction_target_under_bf16_autocast_is_the_fp32_target(cifar_batch, monkeypatch):
    # CUDA autocast runs einsum in bf16; CPU autocast does not, so the test also checks that the target is
    # computed with autocast off (what makes it exact on a GPU too)
    m = tiny_mae(norm_pix_loss=True)
    x = cifar_batch[0][:4]
    ref = m.target(x)
    seen = []
    real = m.patchify
    monkeypatch.setattr(m, "patchify", lambda imgs: seen.append(torch.is_autocast_enabled("cpu")) or real(imgs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = m.target(x)
        loss = m(x, noise=torch.rand(4, 64))["loss"]
    assert t.dtype == torch.float32 and torch.equal(t, ref)
    assert seen == [False, False] and loss.dtype == torch.float32


def _official_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """The official MAE util/pos_embed.py formula, transcribed in NumPy (with the zero cls row)."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_sincos_position_embedding_matches_official_formula():
    assert np.allclose(sincos_2d(64, 8).numpy(), _official_sincos_2d(64, 8), atol=1e-6)
    m = tiny_mae()
    assert torch.allclose(m.pos_embed[0], sincos_2d(64, 8))
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad


def official_layout(depth, dec_depth, d, dd, p, length, c=3) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official MaskedAutoencoderViT's state dict (facebookresearch/mae)."""
    out = {"cls_token": (1, 1, d), "pos_embed": (1, length + 1, d), "mask_token": (1, 1, dd),
           "decoder_pos_embed": (1, length + 1, dd), "patch_embed.proj.weight": (d, c, p, p),
           "patch_embed.proj.bias": (d,)}

    def block(pre, w):
        return {f"{pre}.norm1.weight": (w,), f"{pre}.norm1.bias": (w,), f"{pre}.attn.qkv.weight": (3 * w, w),
                f"{pre}.attn.qkv.bias": (3 * w,), f"{pre}.attn.proj.weight": (w, w), f"{pre}.attn.proj.bias": (w,),
                f"{pre}.norm2.weight": (w,), f"{pre}.norm2.bias": (w,), f"{pre}.mlp.fc1.weight": (4 * w, w),
                f"{pre}.mlp.fc1.bias": (4 * w,), f"{pre}.mlp.fc2.weight": (w, 4 * w), f"{pre}.mlp.fc2.bias": (w,)}

    for i in range(depth):
        out.update(block(f"blocks.{i}", d))
    out.update({"norm.weight": (d,), "norm.bias": (d,), "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,)})
    for i in range(dec_depth):
        out.update(block(f"decoder_blocks.{i}", dd))
    out.update({"decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
                "decoder_pred.weight": (p * p * c, dd), "decoder_pred.bias": (p * p * c,)})
    return out


@pytest.mark.parametrize("name,layout", [
    ("mae_vit_base_patch16", (12, 8, 768, 512, 16, 196)),
    ("mae_vit_tiny_patch4", (12, 4, 192, 128, 4, 64)),
])
def test_state_dict_has_the_official_names_and_shapes(name, layout):
    m = create_model(name)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == official_layout(*layout)


def test_official_layout_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path):
    src = tiny_mae()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "official.pth")
    dst = tiny_mae()
    dst.load_state_dict(torch.load(tmp_path / "official.pth")["model"], strict=True)
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    src.eval(), dst.eval()
    assert torch.equal(src(x, noise=noise)["pred"], dst(x, noise=noise)["pred"])


def test_checkpoint_saved_before_layer_norm_eps_existed_loads_with_the_official_eps(tmp_path):
    from imae import checkpoints as ckpt
    from imae.models.loading import model_from_checkpoint

    src = tiny_mae(layer_norm_eps=1e-5)
    arch = {k: v for k, v in src.arch.to_dict().items() if k != "layer_norm_eps"}
    torch.save({"model": src.state_dict(), "kind": "mae", "arch": arch}, tmp_path / "old.pth")
    torch.save({"model": src.state_dict(), "kind": "mae", "arch": src.arch.to_dict()}, tmp_path / "new.pth")
    old, new = (model_from_checkpoint(ckpt.load(tmp_path / f)) for f in ("old.pth", "new.pth"))
    assert old.arch.layer_norm_eps == 1e-6 and old.norm.eps == 1e-6 and old.blocks[0].norm1.eps == 1e-6
    assert new.arch.layer_norm_eps == 1e-5 and new.decoder_norm.eps == 1e-5 and new.decoder_blocks[0].norm2.eps == 1e-5
    with pytest.raises(ConfigError, match="layer_norm_eps must be positive"):
        tiny_mae(layer_norm_eps=0.0)


def test_mismatching_checkpoint_names_missing_unexpected_and_shapes():
    other = tiny_mae(depth=3).state_dict()
    other["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(tiny_mae(), other, source="x.pth")
    msg = str(e.value)
    assert "unexpected key(s): blocks.2." in msg and "extra.weight" in msg
    with pytest.raises(CheckpointError, match=r"shape mismatch.*pos_embed"):
        load_state_dict(tiny_mae(), tiny_mae(patch_size=8).state_dict(), source="x.pth")
    with pytest.raises(CheckpointError, match=r"missing key\(s\): blocks.1"):
        load_state_dict(tiny_mae(), tiny_mae(depth=1).state_dict())


def test_forward_features_is_mask_free_and_deterministic():
    m = tiny_mae().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = m.forward_features(x), m.forward_features(x)
        latent, mask, _ = m.forward_encoder(x, mask_ratio=0.0, noise=torch.arange(64.0).expand(3, -1))
    assert a.shape == (3, 65, 64) and torch.equal(a, b)
    assert mask.sum() == 0 and torch.allclose(latent, a, atol=1e-5)


def test_image_size_not_divisible_by_patch_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible by patch size 4"):
        create_model("mae_vit_tiny_patch4", img_size=30)


def test_tiny_mae_overfits_one_batch_of_real_cifar(cifar_batch):
    torch.manual_seed(0)
    m = tiny_mae()
    x = cifar_batch[0][:16]
    noise = torch.rand(16, 64)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        loss = m(x, noise=noise)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
