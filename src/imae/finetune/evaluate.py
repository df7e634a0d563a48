"""The fine-tuned classifier scored on the evaluation split: top-1, top-5 and cross-entropy."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from imae.data.loader import WorkerLoader, guarded, ignore_stop_signals
from imae.eval.eval_split import Split
from imae.eval.features import eval_precision
from imae.finetune.loader import FinetuneImages, collate
from imae.runtime import distributed as D


@torch.no_grad()
def evaluate_classifier(vit: nn.Module, test: Split, transform, batch_size: int, device: torch.device,
                        env: D.DistEnv, workers: int = 0, skip_corrupt: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy and cross-entropy on the evaluation split; each rank scores a contiguous
    shard and the counts are summed (no padded duplicates). Unreadable files stop it, or are left out
    under ``skip_corrupt``."""
    vit.eval()
    n = len(test)
    lo, hi = n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size
    shard = torch.utils.data.Subset(FinetuneImages(test, transform), range(lo, hi))
    loader = WorkerLoader(shard, batch_size=batch_size, num_workers=workers, worker_init_fn=ignore_stop_signals,
                          pin_memory=device.type == "cuda", collate_fn=partial(collate, skip_corrupt=skip_corrupt))
    sums = torch.zeros(4, device=device)  # correct@1, correct@5, loss sum, count
    for item, _ in guarded(loader):
        if item is None:
            continue
        x, y = item
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with eval_precision(device):  # bf16 autocast + TF32 on CUDA, as in training
            logits = vit(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        count = torch.full((), float(y.numel()), device=device)  # not torch.tensor: no blocking copy per batch
        sums += torch.stack([(top[:, 0] == y).sum().float(), (top == y[:, None]).any(1).sum().float(),
                             F.cross_entropy(logits, y, reduction="sum"), count])
    sums = D.all_reduce_sum(sums)
    count = max(float(sums[3]), 1.0)
    out = {"test_top1": float(sums[0]) / count, "test_loss": float(sums[2]) / count}
    if test.num_classes > 5:
        out["test_top5"] = float(sums[1]) / count
    return out
