"""The optimiser's parameter groups come from timm (param_groups_weight_decay, param_groups_layer_decay) and
are the groups imae's own rules gave: the same parameters, order, weight decay and lr scales (so checkpoints
written before resume with the same optimiser layout). Pre-training and fine-tuning share one no-decay list."""

from __future__ import annotations

import pytest

from conftest import TINY, tiny_mae
from imae.finetune.vit import layer_decay_groups, vit_from_encoder
from imae.models import create_model
from imae.runtime.optim import param_groups


def _reference_pretrain(model, weight_decay):
    """imae's rule before timm: decay on matrices; none on 1-D tensors, biases, tokens, position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in (
                "cls_token", "mask_token", "pos_embed", "decoder_pos_embed")
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _reference_finetune(vit, weight_decay, layer_decay):
    """MAE's layer-wise decay (BEiT's rule): layer 0 the embeddings, i + 1 block i, depth + 1 the rest."""
    top = len(vit.blocks) + 1
    groups: dict = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in ("cls_token", "pos_embed"))
        lid = (0 if name in ("cls_token", "pos_embed") or name.startswith("patch_embed") else
               int(name.split(".")[1]) + 1 if name.startswith("blocks.") else top)
        g = groups.setdefault((lid, decay), {"params": [], "lr_scale": layer_decay ** (top - lid),
                                             "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
    return list(groups.values())


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        assert [id(p) for p in ga["params"]] == [id(p) for p in gb["params"]]
        options = {k: v for k, v in ga.items() if k not in ("params", "names")}
        assert options == pytest.approx({k: v for k, v in gb.items() if k != "params"})


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_pretraining_groups_equal_imaes_rule_for_mae_and_imae(weight_decay):
    mae = tiny_mae()
    teacher = tiny_mae(decoder_embed_dim=48)
    student = create_model("imae_vit_tiny_patch4", **TINY, distill=True, teacher_dim=48, teacher=teacher)
    for model in (mae, student):
        _same(param_groups(model, weight_decay), _reference_pretrain(model, weight_decay))
    decayed = {id(p) for p in param_groups(mae, 0.05)[0]["params"]}
    assert id(mae.mask_token) not in decayed and id(mae.cls_token) not in decayed
    assert id(mae.blocks[0].attn.qkv.weight) in decayed


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_fine_tuning_groups_follow_maes_layer_decay_rule_which_timms_does_not(pool):
    from timm.optim import param_groups_layer_decay

    vit = vit_from_encoder(tiny_mae(), 10, pool=pool)
    _same(layer_decay_groups(vit, 0.05, 0.65), _reference_finetune(vit, 0.05, 0.65))
    # timm's groups put the final norm with the last block, MAE's with the head: so imae keeps its own
    timm_groups = param_groups_layer_decay(vit, 0.05, layer_decay=0.5)
    timm_scale = {id(p): g["lr_scale"] for g in timm_groups for p in g["params"]}
    ours = {id(p): g["lr_scale"] for g in layer_decay_groups(vit, 0.05, 0.5) for p in g["params"]}
    norm = vit.norm.weight if pool == "cls" else vit.fc_norm.weight
    assert ours[id(norm)] == 1.0 and (timm_scale[id(norm)] == 0.5) == (pool == "cls")
