"""The classification objective of fine-tuning, for the shared training loop (``imae.engine.loop``).

It owns the timm ViT, prepares each batch (the step's seeds, then mixup / cutmix into soft targets),
returns the cross-entropy (label-smoothed, or soft-target after mixing), evaluates on the test split
after an epoch (every ``finetune.eval_every`` and at the last), and keeps the epoch records that its
checkpoints and ``finetune.json`` carry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from imae.config.finetune import FinetuneConfig
from imae.data.loader import derive_seed
from imae.engine.objectives.base import Objective
from imae.eval.eval_split import Split
from imae.finetune.evaluate import evaluate_classifier
from imae.finetune.loader import LabeledBatch
from imae.runtime import distributed as D


def mixup_and_loss(t, num_classes: int):
    """(mixup function or None, criterion): soft targets with mixup/cutmix, else label-smoothed CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if t.mixup > 0 or t.cutmix > 0:
        return (Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=num_classes), SoftTargetCrossEntropy())
    if t.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=t.label_smoothing)
    return None, nn.CrossEntropyLoss()


class ClassifyObjective(Objective):
    """Supervised classification of augmented, mixed images by ``model`` (a timm ViT)."""

    kind = "vit"

    def __init__(self, model: nn.Module, cfg: FinetuneConfig, num_classes: int, test: Split, test_transform,
                 env: D.DistEnv, source: str, history: list[dict[str, Any]] | None = None) -> None:
        self.model, self.cfg, self.test, self.test_transform, self.env = model, cfg, test, test_transform, env
        self.source = source
        self.mixup, self.criterion = mixup_and_loss(cfg.finetune, num_classes)
        self.history: list[dict[str, Any]] = list(history or [])  # finished epochs' records

    def prepare_batch(self, batch: LabeledBatch, epoch: int, step: int, rank: int) -> LabeledBatch:
        """To the device, then mixup/cutmix. Mixup/cutmix (NumPy) and drop path (torch, in the forward
        pass) draw from generators seeded by (seed, epoch, step, rank): a resumed step draws the same."""
        step_seed = derive_seed(self.cfg.seed, epoch, step, rank, 0x5EED)
        torch.manual_seed(step_seed)
        np.random.seed(step_seed % 2**32)
        device = self.env.device
        x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return LabeledBatch(x, y, batch.skipped)

    def __call__(self, net: nn.Module, batch: LabeledBatch) -> dict[str, torch.Tensor]:
        """net: the model, possibly wrapped by DDP / torch.compile. Returns {"loss": scalar}."""
        return {"loss": self.criterion(net(batch.images).float(), batch.labels)}

    def evaluate(self) -> dict[str, float]:
        t = self.cfg.finetune
        return evaluate_classifier(self.model, self.test, self.test_transform, t.batch_size, self.env.device,
                                   self.env, self.cfg.data.num_workers, self.cfg.data.skip_corrupt)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Score the test split after every ``eval_every`` epochs and the last; keep the epoch's record."""
        t = self.cfg.finetune
        if (epoch + 1) % max(t.eval_every, 1) == 0 or epoch + 1 == t.epochs:
            metrics.update(self.evaluate())
        self.history.append({"epoch": epoch + 1, **metrics})

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "history": self.history}
