"""i-MAE: mixing, disentanglement, two-way reconstruction, distillation, pairing (METHOD.md sections 2-3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, tiny_mae
from imae.data.mixing import AlphaSampler, mix
from imae.data.pairing import choose_partners
from imae.errors import ConfigError
from imae.models import IMAE, IMAEOptions, MaskedAutoencoder, create_model
from imae.models.mae import masked_mse


def tiny_imae(teacher=None, **options) -> IMAE:
    arch_keys = {"norm_pix_loss", "decoder_embed_dim"}
    arch = {**TINY, **{k: v for k, v in options.items() if k in arch_keys}}
    opts = {k: v for k, v in options.items() if k not in arch_keys}
    if teacher is not None and teacher.arch.decoder_embed_dim != arch["decoder_embed_dim"]:
        opts.setdefault("teacher_dim", teacher.arch.decoder_embed_dim)
    return create_model("imae_vit_tiny_patch4", **arch, options=IMAEOptions(**opts), teacher=teacher)


class SpyTeacher(MaskedAutoencoder):
    """Records what the teacher's encoder receives."""

    def __init__(self, arch):
        super().__init__(arch)
        self.calls = []

    def forward_encoder(self, imgs, mask_ratio=0.75, noise=None):
        latent, mask, ids = super().forward_encoder(imgs, mask_ratio, noise)
        self.calls.append(dict(imgs=imgs.clone(), mask=mask.clone(), training=self.training,
                               grad=torch.is_grad_enabled()))
        return latent, mask, ids


def spy_teacher(**over) -> SpyTeacher:
    torch.manual_seed(1)
    return SpyTeacher(tiny_mae(**over).arch)


@pytest.fixture
def pair(cifar_batch):
    x, _ = cifar_batch
    return x[:8], x[8:16]


def test_mixture_is_the_alpha_weighted_sum_per_sample(pair):
    x_sub, x_dom = pair
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.05, 0.25])
    out = tiny_imae(distill=False)(x_sub, x_dom, alpha, noise=torch.rand(8, 64))
    for i in range(8):
        assert torch.allclose(out["mixture"][i], alpha[i] * x_sub[i] + (1 - alpha[i]) * x_dom[i], atol=1e-6)
    assert torch.allclose(mix(x_sub, x_dom, 0.3), 0.3 * x_sub + 0.7 * x_dom)


@pytest.mark.parametrize("mode,kw", [("fixed", dict(value=0.3)), ("uniform", dict(uniform=(0.1, 0.4))),
                                     ("beta", dict(beta=(1.0, 1.0))), ("beta", dict(beta=(2.0, 5.0)))])
def test_alpha_samplers_give_the_subordinate_the_smaller_weight(mode, kw):
    g = torch.Generator().manual_seed(0)
    a = AlphaSampler(mode, **kw).sample(20000, g)
    assert a.shape == (20000,) and (a > 0).all() and (a <= 0.5).all()
    if mode == "fixed":
        assert (a == 0.3).all()
    if mode == "uniform":
        assert a.min() >= 0.1 and a.max() <= 0.4 and a.mean().item() == pytest.approx(0.25, abs=0.01)
    if kw.get("beta") == (1.0, 1.0):  # folded Beta(1, 1) is U(0, 0.5)
        assert a.mean().item() == pytest.approx(0.25, abs=0.01) and a.max() > 0.49
    batch = AlphaSampler(mode, per="batch", **kw).sample(16, g)
    assert (batch == batch[0]).all()


def test_beta_alphas_follow_the_folded_beta_and_replay_from_the_generator():
    # drawn on the batch's device from two Gamma draws (no NumPy round trip): folded Beta(2, 5) moments
    ref = torch.distributions.Beta(2.0, 5.0).sample((200000,))
    ref = torch.minimum(ref, 1 - ref)
    a = AlphaSampler("beta", beta=(2.0, 5.0)).sample(200000, torch.Generator().manual_seed(3))
    assert a.mean().item() == pytest.approx(ref.mean().item(), abs=2e-3)
    assert a.std().item() == pytest.approx(ref.std().item(), abs=2e-3)
    again = AlphaSampler("beta", beta=(2.0, 5.0)).sample(200000, torch.Generator().manual_seed(3))
    assert torch.equal(a, again) and a.dtype == torch.float32
    tiny = AlphaSampler("beta", beta=(1e-3, 1e-3)).sample(1000, torch.Generator().manual_seed(0))
    assert torch.isfinite(tiny).all() and (tiny > 0).all()


def test_model_skips_the_alpha_check_only_when_asked(pair):
    bad = torch.tensor([0.2] * 7 + [0.7])
    with pytest.raises(ValueError, match=r"must lie in \(0, 0.5\]"):
        tiny_imae(distill=False)(*pair, bad, noise=torch.rand(8, 64))
    out = tiny_imae(distill=False)(*pair, bad, noise=torch.rand(8, 64), check_alpha=False)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("bad", [dict(mode="fixed", value=0.7), dict(mode="fixed", value=0.0),
                                 dict(mode="uniform", uniform=(0.2, 0.6)), dict(mode="beta", beta=(0.0, 1.0))])
def test_alpha_outside_the_open_half_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="imae.alpha"):
        AlphaSampler(**bad)


def test_model_refuses_alpha_above_one_half(pair):
    with pytest.raises(ValueError, match=r"must lie in \(0, 0.5\]"):
        tiny_imae(distill=False)(*pair, 0.7)
    with pytest.raises(ValueError, match=r"must lie in \(0, 0.5\]"):
        tiny_imae(distill=False)(*pair, torch.tensor([0.2] * 7 + [0.0]))


def test_teacher_sees_clean_images_under_the_students_mask_without_gradients(pair):
    x_sub, x_dom = pair
    teacher = spy_teacher()
    model = tiny_imae(teacher=teacher)
    model.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    noise = torch.rand(8, 64)
    out = model(x_sub, x_dom, 0.3, noise=noise)
    assert len(teacher.calls) == 1  # both clean images in one batched pass
    call = teacher.calls[0]
    assert torch.equal(call["imgs"], torch.cat([x_sub, x_dom]))  # clean images, not the mixture
    assert torch.equal(call["mask"], torch.cat([out["mask"], out["mask"]]))  # exactly the student's patches
    assert not call["training"] and not call["grad"]
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    # the distillation targets equal a direct teacher computation
    with torch.no_grad():
        h, _, _ = model.forward_encoder(out["mixture"], 0.75, noise)
        z_sub, z_dom = model.split(h)
        t_sub = teacher.decoder_embed(MaskedAutoencoder.forward_encoder(teacher, x_sub, 0.75, noise)[0])
        t_dom = teacher.decoder_embed(MaskedAutoencoder.forward_encoder(teacher, x_dom, 0.75, noise)[0])
    assert out["distill_sub"].item() == pytest.approx(F.mse_loss(z_sub, t_sub).item(), rel=1e-5)
    assert out["distill_dom"].item() == pytest.approx(F.mse_loss(z_dom, t_dom).item(), rel=1e-5)


def test_loss_is_the_weighted_sum_and_alpha_weights_the_subordinate(pair):
    x_sub, x_dom = pair
    model = tiny_imae(teacher=spy_teacher(), w_rec_sub=2.0, w_rec_dom=0.5, w_distill_sub=3.0, w_distill_dom=0.0)
    out = model(x_sub, x_dom, 0.2, noise=torch.rand(8, 64))
    expect = 2.0 * out["rec_sub"] + 0.5 * out["rec_dom"] + 3.0 * out["distill_sub"]
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-6)
    # the reconstruction terms score against the right source image
    target_sub = model.target(x_sub)
    assert out["rec_sub"].item() == pytest.approx(masked_mse(out["pred_sub"], target_sub, out["mask"]).item(), rel=1e-6)
    # swapping the weight moves the mixture towards the other image
    m_small = model(x_sub, x_dom, 0.1, noise=torch.rand(8, 64))["mixture"]
    assert (m_small - x_dom).abs().mean() < (out["mixture"] - x_dom).abs().mean()


def test_sub_branch_variant_has_no_dominant_prediction_or_terms(pair):
    teacher = spy_teacher()
    model = tiny_imae(teacher=teacher, branches="sub")
    out = model(*pair, 0.3, noise=torch.rand(8, 64))
    assert "pred_dom" not in out and "rec_dom" not in out and "distill_dom" not in out
    assert {"rec_sub", "distill_sub"} <= set(out)
    assert not any(k.startswith("decoder_embed_dom") for k in model.state_dict())
    assert torch.equal(teacher.calls[0]["imgs"], pair[0])


def test_without_distillation_no_teacher_runs(pair):
    teacher = spy_teacher()
    model = tiny_imae(distill=False)
    model.attach_teacher(teacher)
    out = model(*pair, 0.3)
    assert teacher.calls == [] and not any(k.startswith("distill") for k in out)
    assert set(k for k in out if k.startswith("rec")) == {"rec_sub", "rec_dom"}


def test_norm_pix_loss_changes_the_targets_of_both_branches(pair):
    x_sub, x_dom = pair
    plain = tiny_imae(distill=False)
    normed = tiny_imae(distill=False, norm_pix_loss=True)
    normed.load_state_dict(plain.state_dict())
    noise = torch.rand(8, 64)
    a, b = plain(x_sub, x_dom, 0.3, noise=noise), normed(x_sub, x_dom, 0.3, noise=noise)
    assert torch.equal(a["pred_sub"], b["pred_sub"])  # same predictions ...
    for branch, x in (("sub", x_sub), ("dom", x_dom)):  # ... scored against normalised patches
        assert b[f"rec_{branch}"].item() != pytest.approx(a[f"rec_{branch}"].item(), rel=1e-3)
        target = normed.target(x)
        assert torch.allclose(target.mean(-1), torch.zeros_like(target[..., 0]), atol=1e-5)
        expect = masked_mse(b[f"pred_{branch}"], target, b["mask"])
        assert b[f"rec_{branch}"].item() == pytest.approx(expect.item(), rel=1e-6)


def test_batched_decoder_and_teacher_equal_separate_passes(pair):
    x_sub, x_dom = pair
    teacher = spy_teacher()
    model = tiny_imae(teacher=teacher).eval()
    noise = torch.rand(8, 64)
    with torch.no_grad():
        out = model(x_sub, x_dom, 0.3, noise=noise)
        h, mask, ids = model.forward_encoder(out["mixture"], 0.75, noise)
        z_sub, z_dom = model.split(h)
        pred_sub = model.decode_tokens(z_sub, ids)
        pred_dom = model.decode_tokens(z_dom, ids)
        t_sub = model.teacher_latents(x_sub, 0.75, noise)
        t_dom = model.teacher_latents(x_dom, 0.75, noise)
    assert (out["pred_sub"] - pred_sub).abs().max() < 1e-5 and (out["pred_dom"] - pred_dom).abs().max() < 1e-5
    assert out["distill_sub"].item() == pytest.approx(F.mse_loss(z_sub, t_sub).item(), abs=1e-5)
    assert out["distill_dom"].item() == pytest.approx(F.mse_loss(z_dom, t_dom).item(), abs=1e-5)


def test_adapter_maps_to_a_wider_teacher_latent(pair):
    teacher = spy_teacher(decoder_embed_dim=64, decoder_num_heads=2)
    model = tiny_imae(teacher=teacher)
    assert model.distill_adapter is not None and model.distill_adapter.weight.shape == (64, 32)
    out = model(*pair, 0.3)
    out["loss"].backward()
    assert model.distill_adapter.weight.grad is not None
    with pytest.raises(ValueError, match="same image and patch size"):
        tiny_imae(distill=False).attach_teacher(tiny_mae(patch_size=8))


def test_student_starts_from_an_mae_and_exports_back_to_one(pair):
    mae = tiny_mae()
    model = tiny_imae(distill=False)
    model.load_mae_state_dict(mae.state_dict())
    w = mae.state_dict()["decoder_embed.weight"]
    assert torch.equal(model.decoder_embed_sub.weight, w) and torch.equal(model.decoder_embed_dom.weight, w)
    x = pair[0]
    back = tiny_mae()
    back.load_state_dict(model.mae_state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(back.forward_features(x), model.forward_features(x))
    # from an MAE start, alpha -> 0 reconstructions of the dominant equal the MAE's own
    noise = torch.rand(8, 64)
    with torch.no_grad():
        tiny = model(x, x, 0.5, noise=noise)
        ref = mae(x, noise=noise)
    assert torch.allclose(tiny["pred_dom"], ref["pred"], atol=1e-5)


def test_partner_sampler_hits_p_on_real_cifar10_labels(cifar10_dir):
    from imae.data.datasets import load_split
    from imae.data.loader import BatchPlan

    labels = load_split("cifar10", "train", path=str(cifar10_dir), in_memory=False).labels  # file list only
    assert len(labels) == 50000
    plan = BatchPlan(labels, batch_size=64, seed=0, class_pairs=True)
    order = plan.epoch_order(0)
    for p in (0.0, 0.5, 1.0):
        g = torch.Generator().manual_seed(1)
        same = []
        for row in order:
            partner, s = choose_partners(labels[row], p, g)
            assert (partner != torch.arange(64)).all()
            if p == 1.0:
                assert s.all()  # in every batch
            same.append(s.float().mean())
        assert torch.stack(same).mean().item() == pytest.approx(p, abs=0.02)
    g = torch.Generator().manual_seed(1)
    rnd = torch.stack([choose_partners(labels[row], "random", g)[1].float().mean() for row in order[:200]])
    # a uniform partner among the 63 others: the sample's pair-mate plus ~10% of the other 62
    assert rnd.mean().item() == pytest.approx((1 + 62 * 0.1) / 63, abs=0.03)


def test_self_pairing_feeds_the_clean_image(pair):
    partner, same = choose_partners(torch.tensor([3, 1, 3, 2]), "self")
    assert torch.equal(partner, torch.arange(4)) and same.all()
    out = tiny_imae(distill=False)(pair[0], pair[0], 0.3)
    assert torch.allclose(out["mixture"], pair[0], atol=1e-6)


def test_tiny_imae_overfits_a_batch_of_real_cifar_mixtures(cifar_batch):
    x, _ = cifar_batch
    torch.manual_seed(0)
    model = tiny_imae(teacher=spy_teacher())
    x_sub, x_dom = x[:16], x[16:32]
    alpha = torch.linspace(0.1, 0.45, 16)
    noise = torch.rand(16, 64)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = None
    for _ in range(80):
        out = model(x_sub, x_dom, alpha, noise=noise)
        first = first or {k: out[k].item() for k in ("rec_sub", "rec_dom")}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["rec_sub"].item() < 0.5 * first["rec_sub"]
    assert out["rec_dom"].item() < 0.5 * first["rec_dom"]


def test_self_paired_sub_branch_is_the_mae_loss_plus_clean_image_distillation(pair):
    """Arm (h) of the studies (--set imae.same_class_p=self --set imae.branches=sub): an MAE continued with the
    teacher's latent distillation on clean, unmixed images."""
    x, _ = pair
    teacher = spy_teacher()
    student = tiny_imae(teacher, branches="sub")
    partner, _ = choose_partners(torch.arange(8), "self")
    noise = torch.rand(8, 64, generator=torch.Generator().manual_seed(3))
    out = student(x, x[partner], torch.full((8,), 0.3), mask_ratio=0.75, noise=noise)
    assert set(k for k in out if k.startswith(("rec_", "distill_"))) == {"rec_sub", "distill_sub"}
    mae = MaskedAutoencoder(student.arch)  # the same weights as a plain MAE
    mae.load_state_dict(student.mae_state_dict())
    mae_loss = mae(x, mask_ratio=0.75, noise=noise)["loss"]
    with torch.no_grad():
        t = teacher.decoder_embed(teacher.forward_encoder(x, 0.75, noise)[0])
        z = student.decoder_embed_sub(student.forward_encoder(x, 0.75, noise)[0])
    distill = F.mse_loss(z, t)
    assert torch.allclose(out["rec_sub"], mae_loss, atol=1e-5)
    assert torch.allclose(out["distill_sub"], distill, atol=1e-6)
    assert torch.allclose(out["loss"], mae_loss + distill, atol=1e-5)
    seen = teacher.calls[0]  # the teacher saw the clean images under the student's mask
    assert torch.equal(seen["imgs"], x) and torch.equal(seen["mask"], out["mask"])
