"""The i-MAE training objective: pick partners and alphas for a batch, then run the student."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from imae import checkpoints
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.state import load_state_dict
from imae.config import Config
from imae.console import info
from imae.data.datasets import ImageSet
from imae.data.loader import Batch
from imae.data.mixing import AlphaSampler
from imae.data.pairing import choose_partners, needs_labels
from imae.engine.objectives.base import Objective
from imae.engine.objectives.common import model_overrides, note_eps
from imae.engine.teacher import Teacher
from imae.errors import CheckpointError, ConfigError, DataError
from imae.models.imae import IMAE, IMAEOptions
from imae.models.loading import mae_from_checkpoint, refuse_classifier
from imae.models.registry import create_model
from imae.runtime import distributed as D

# an official-layout teacher of a non-standard width: the student's --set num_heads is another model's
TEACHER_HEADS_HINT = ("re-save the teacher with its count (imae export TEACHER --to mae --output TEACHER.pth "
                      "--num-heads N) and pass --teacher TEACHER.pth")


def student_name(name: str) -> str:
    """``mae_vit_tiny_patch4`` -> ``imae_vit_tiny_patch4`` (an MAE model name picks the same size)."""
    return "i" + name if name.startswith("mae_") else name


class IMAEObjective(Objective):
    """Each sample is the subordinate; its in-batch partner is the dominant image."""

    kind = "imae"

    def __init__(self, cfg: Config, teacher: Teacher | None = None) -> None:
        """``teacher``: the resolved teacher (:func:`imae.engine.teacher.resolve_teacher`); None: load
        ``imae.teacher`` here (nothing recorded about it in the checkpoints)."""
        i = cfg.imae
        self.cfg = cfg
        self.same_class_p = i.same_class_p
        self.class_pairs = needs_labels(self.same_class_p)
        self.alphas = AlphaSampler(i.alpha_mode, i.alpha, i.alpha_uniform, i.alpha_beta, i.alpha_per)
        self.teacher_ck: Checkpoint | None = None
        self.teacher_record: dict[str, str] | None = None
        teacher_dim = None
        if i.distill:
            if not i.teacher:
                raise ConfigError("i-MAE with distillation needs a frozen MAE teacher: pass --teacher "
                                  "RUN_DIR_OR_CKPT (or --set imae.distill=false)")
            self.teacher_ck = teacher.ck if teacher is not None else checkpoints.load(i.teacher)
            self.teacher_record = teacher.record if teacher is not None else None
            refuse_classifier(self.teacher_ck, "--teacher (imae.teacher)")
            if not self.teacher_ck.has_decoder:  # before its heads are asked for
                raise CheckpointError(f"teacher {self.teacher_ck.path} holds only an encoder; distillation "
                                      f"needs its decoder_embed too: use a full MAE checkpoint")
            teacher_model = mae_from_checkpoint(self.teacher_ck, heads_hint=TEACHER_HEADS_HINT)
            teacher_dim = teacher_model.arch.decoder_embed_dim
        self.options = IMAEOptions(branches=i.branches, distill=i.distill, w_rec_sub=i.w_rec_sub,
                                   w_rec_dom=i.w_rec_dom, w_distill_sub=i.w_distill_sub,
                                   w_distill_dom=i.w_distill_dom, teacher_dim=teacher_dim)
        self.model: IMAE = create_model(student_name(cfg.model.name), **model_overrides(cfg), options=self.options)
        if i.distill:
            try:
                self.model.attach_teacher(teacher_model)
            except ValueError as e:
                raise ConfigError(f"teacher {self.teacher_ck.path}: {e}") from None
        self._stats = torch.zeros(4)
        self.labeled = True

    def prepare(self, data: ImageSet, device: torch.device) -> None:
        """Check the data set can be paired as configured."""
        if self.class_pairs and not data.has_labels:
            raise DataError(f"imae.same_class_p={self.same_class_p} needs class labels, and {data.name} has none; "
                            f"use --set imae.same_class_p=random")
        if self.teacher_ck is not None:
            t = self.model.teacher.arch
            info(f"teacher: {self.teacher_ck.path} (ViT {t.embed_dim}x{t.depth}, decoder width "
                 f"{t.decoder_embed_dim}{', adapter to it' if self.model.distill_adapter is not None else ''})")
            self.teacher_ck = None  # its tensors are in the teacher now
        self._stats = torch.zeros(4, device=device)
        self.labeled = data.has_labels

    def load_init(self, ck: Checkpoint) -> None:
        """Start from an MAE checkpoint (both branch maps from its decoder_embed) or an i-MAE one."""
        source = str(ck.path)
        note_eps(ck, self.model)
        if ck.kind == "imae":
            load_state_dict(self.model, ck.model, source=source)
            return
        try:
            self.model.load_mae_state_dict(ck.model, source=source)
        except ValueError as e:
            raise CheckpointError(str(e)) from None

    def __call__(self, net: nn.Module, batch: Batch, mask_ratio: float | None = None) -> dict[str, torch.Tensor]:
        """net: the model, possibly wrapped by DDP / torch.compile; ``mask_ratio``: None = train.mask_ratio.
        Returns the weighted loss and its terms (scalars)."""
        mask_ratio = self.cfg.train.mask_ratio if mask_ratio is None else mask_ratio
        x, g = batch.images, batch.generator
        n = x.shape[0]
        alpha = self.alphas.sample(n, g, x.device)
        partner, same = choose_partners(batch.labels, self.same_class_p, g)
        noise = torch.rand(n, self.model.arch.num_patches, generator=g, device=x.device)
        # the sampler checked its range when it was built: no per-step check (a host sync, a graph break)
        out = net(x, x[partner], alpha, mask_ratio=mask_ratio, noise=noise, check_alpha=False)
        with torch.no_grad():  # torch.full, not torch.tensor: no blocking host-to-device copy
            self._stats += torch.stack([same.float().sum(), alpha.sum(), (alpha**2).sum(),
                                        torch.full((), float(n), device=x.device)])
        return {k: v for k, v in out.items() if k == "loss" or k.startswith(("rec_", "distill_"))}

    def epoch_stats(self) -> dict[str, float]:
        """Realised same-class rate and alpha statistics since the last call (all ranks)."""
        s = D.all_reduce_sum(self._stats.clone())
        self._stats.zero_()
        n = max(float(s[3]), 1.0)
        mean = float(s[1]) / n
        out = {"alpha_mean": mean, "alpha_std": max(float(s[2]) / n - mean**2, 0.0) ** 0.5}
        if self.same_class_p != "self" and self.labeled:
            out["same_class_rate"] = float(s[0]) / n
        return out

    def running_stats(self) -> list[float]:
        """The statistics since the last ``epoch_stats`` summed over ranks (a mid-epoch checkpoint keeps them)."""
        return [float(v) for v in D.all_reduce_sum(self._stats.clone()).tolist()]

    def resume_stats(self, values: list[float], main: bool) -> None:
        """Continue from ``running_stats`` of a stopped epoch (held by rank 0 alone, as the loss sums)."""
        self._stats = torch.tensor(values if main else [0.0] * len(values), device=self._stats.device)

    def checkpoint_meta(self) -> dict[str, Any]:
        from dataclasses import asdict

        meta = {"kind": "imae", "arch": self.model.arch.to_dict(), "imae_options": asdict(self.options)}
        if self.teacher_record is not None:  # what a resume checks the teacher against (imae.engine.teacher)
            meta["teacher"] = dict(self.teacher_record)
        return meta
