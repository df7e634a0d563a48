"""End-to-end fine-tuning of the encoder as a timm ViT classifier (MAE's ``main_finetune.py`` recipe).

Layer-wise lr decay, AdamW, per-iteration warmup + half-cycle cosine, mixup/cutmix with label smoothing
(``timm.data.Mixup`` + ``SoftTargetCrossEntropy``), drop path, RandAugment + random erasing
(``timm.data.create_transform``), cls-token pooling. One process, or N processes launched by torchrun
(DDP; gloo on CPUs, NCCL on GPUs), as pre-training. Writes a run directory: ``config.yaml``,
``log.jsonl``, ``tb/``, ``checkpoint-last.pth`` (+ ``checkpoint-<epoch>.pth``) and ``finetune.json``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from imae.config import save_config
from imae.engine import checkpoint as ckpt
from imae.engine import distributed as D
from imae.engine.logs import RunLog, info, progress
from imae.engine.optim import lr_at, set_lr
from imae.errors import ConfigError, DataError, TrainingError
from imae.eval.config import FinetuneConfig
from imae.eval.data import Split
from imae.eval.results import write_result
from imae.eval.run import open_session
from imae.eval.vit import layer_decay_groups, vit_from_encoder


class _Images(torch.utils.data.Dataset):
    """PIL images of a split (in memory or files) through a torchvision/timm transform -> (tensor, label)."""

    def __init__(self, split: Split, transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        from PIL import Image

        from imae.data.decode import open_rgb

        d = self.split.data
        im = (Image.fromarray(d.images[i].permute(1, 2, 0).numpy()) if d.images is not None
              else open_rgb(d.files[i]))
        return self.transform(im), int(d.labels[i])


def transforms(cfg: FinetuneConfig, size: int, mean, std, in_memory: bool):
    """(train, eval) transforms: RandomResizedCrop + flip + RandAugment + random erasing; evaluation:
    the images as they are (in memory, already at the model's size) or resize + centre crop 0.875."""
    from timm.data import create_transform

    _allow_zero_bit_posterize()
    t = cfg.finetune
    train = create_transform(size, is_training=True, scale=tuple(t.crop_scale), auto_augment=t.auto_augment,
                             color_jitter=None, interpolation="bicubic", re_prob=t.reprob, re_mode="pixel",
                             re_count=1, mean=tuple(mean), std=tuple(std))
    if in_memory:
        from torchvision import transforms as T

        test = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    else:
        test = create_transform(size, is_training=False, crop_pct=0.875, interpolation="bicubic",
                                mean=tuple(mean), std=tuple(std))
    return train, test


def _allow_zero_bit_posterize() -> None:
    """RandAugment's 'inc1' posterize keeps 0 bits at magnitude 10, which Pillow >= 13 rejects (it used to
    give a black image). Register a posterize that gives the black image again, so the policy is unchanged."""
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return  # this Pillow still accepts 0 bits
    except ValueError:
        pass

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return img.point(lambda _: 0)
        return auto_augment.posterize(img, bits_to_keep, **kwargs)

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = posterize


def finetune(ckpt_spec: str | Path, *, preset: str | None = None, overrides: dict[str, Any] | None = None,
             sets: list[str] | None = None) -> Path:
    """Fine-tune ``ckpt_spec`` (checkpoint or run directory); returns the fine-tune's run directory."""
    s = open_session(ckpt_spec, preset=preset, overrides=overrides, sets=sets, cls=FinetuneConfig, move=False)
    env = D.setup(s.cfg.device)
    try:
        return _finetune(s, env)
    finally:
        D.cleanup()


def _finetune(s, env: D.DistEnv) -> Path:
    cfg: FinetuneConfig = s.cfg
    t, main = cfg.finetune, env.is_main
    D.check_same_config(cfg.to_dict())
    run_dir = Path(cfg.output_dir) if cfg.output_dir else s.subject.default_output_dir / "finetune"
    if main:
        if ckpt.checkpoints_in(run_dir):
            raise ConfigError(f"{run_dir} already holds a fine-tune; choose another --output-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    train, test = s.split("train"), s.split("eval")
    if not (train.has_labels and test.has_labels):
        raise DataError(f"fine-tuning needs class labels; {test.data.name} has none")
    torch.manual_seed(cfg.seed)
    device = env.device
    vit = vit_from_encoder(s.subject.model, train.num_classes, t.drop_path, t.pool).to(device)
    net: nn.Module = DDP(vit, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed \
        else vit

    in_memory = train.data.images is not None
    tf_train, tf_test = transforms(cfg, train.size, train.data.mean, train.data.std, in_memory)
    sampler = torch.utils.data.DistributedSampler(_Images(train, tf_train), env.world_size, env.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    workers = cfg.data.num_workers
    loader = torch.utils.data.DataLoader(sampler.dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda", worker_init_fn=_seed_worker)
    steps = len(loader)
    if steps == 0:
        raise DataError(f"{len(train)} training images are fewer than one batch of {t.batch_size} x "
                        f"{env.world_size} process(es); lower --set finetune.batch_size")
    mixup, criterion = _mixing(t, train.num_classes)
    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = t.blr * eff_batch / 256
    optimizer = torch.optim.AdamW(layer_decay_groups(vit, t.weight_decay, t.layer_decay), lr=base_lr, betas=t.betas,
                                  fused=device.type == "cuda")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if t.amp and device.type == "cuda"
                else contextlib.nullcontext())
    log = RunLog(run_dir, enabled=main)
    info(f"fine-tuning {s.subject.path} ({sum(p.numel() for p in vit.parameters()) / 1e6:.2f}M parameters) on "
         f"{len(train)} {train.data.name} images, {steps} steps/epoch x {t.epochs} epochs, {env.world_size} "
         f"process(es); lr {base_lr:.3g}; writing {run_dir}", main)
    history: list[dict[str, float]] = []
    global_step = 0
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        net.train()
        bar = progress(steps, desc=f"fine-tune {epoch + 1}/{t.epochs}", enabled=main)
        total, seen, t0 = torch.zeros((), device=device), 0, time.time()
        optimizer.zero_grad(set_to_none=True)
        for step, (x, y) in enumerate(loader):
            if step % t.accum_iter == 0:
                set_lr(optimizer, lr_at(epoch + step / steps, base_lr, t.min_lr, t.warmup_epochs, t.epochs))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            last = (step + 1) % t.accum_iter == 0 or step + 1 == steps
            sync = contextlib.nullcontext() if last or not isinstance(net, DDP) else net.no_sync()
            with sync:
                with autocast:
                    loss = criterion(net(x).float(), y)
                if not math.isfinite(float(loss.detach())):
                    raise TrainingError(f"fine-tuning loss became {float(loss.detach())} at epoch {epoch + 1} step "
                                        f"{step + 1}; lower the learning rate (finetune.blr) or set finetune.clip_grad")
                (loss / t.accum_iter).backward()
            if last:
                if t.clip_grad:
                    torch.nn.utils.clip_grad_norm_(vit.parameters(), t.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if global_step % t.log_every == 0:
                    rec = {"loss": float(loss.detach()), "lr": optimizer.param_groups[-1]["lr"], "epoch": epoch,
                           "step": global_step}
                    log.write("step", rec, step=global_step, prefix="finetune")
            total += loss.detach() * x.shape[0]
            seen += x.shape[0]
            bar.update(1)
        bar.close()
        sums = D.all_reduce_sum(torch.stack([total.float(), torch.tensor(float(seen), device=device)]))
        train_loss = float(sums[0] / sums[1].clamp_min(1))
        rec = {"epoch": epoch, "loss": train_loss, "lr": optimizer.param_groups[-1]["lr"],
               "time_s": time.time() - t0}
        if (epoch + 1) % max(t.eval_every, 1) == 0 or epoch + 1 == t.epochs:
            rec.update(evaluate_classifier(vit, test, tf_test, t.batch_size, device, env, workers))
        history.append(rec)
        log.write("epoch", rec, step=epoch, prefix="epoch")
        log.flush()
        info(f"fine-tune epoch {epoch + 1}/{t.epochs}: loss {train_loss:.4f}"
             + (f", test top-1 {rec['test_top1']:.4f}" if "test_top1" in rec else ""), main)
        if main:
            state = {"model": vit.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "config": cfg.to_dict(), "kind": "vit", "source": str(s.subject.path)}
            ckpt.save_atomic(state, run_dir / "checkpoint-last.pth")
            if (epoch + 1) % max(t.save_every, 1) == 0 or epoch + 1 == t.epochs:
                ckpt.save_atomic(state, run_dir / f"checkpoint-{epoch}.pth")
    log.close()
    if main:
        evaluated = [h for h in history if "test_top1" in h]
        results = {"best_top1": max(h["test_top1"] for h in evaluated),
                   "final_top1": evaluated[-1]["test_top1"], "final_top5": evaluated[-1].get("test_top5"),
                   "epochs": t.epochs, "pool": t.pool, "train_images": len(train), "test_images": len(test),
                   "history": history}
        record = {"checkpoint": s.subject.describe(), "data": s.describe_data(test, train), "config": cfg.to_dict(),
                  "results": results, "timing": {"train_s": sum(h["time_s"] for h in history)}}
        write_result(run_dir, "finetune", record)
        info(f"done: {run_dir}", main)
    return run_dir


def _mixing(t, num_classes: int):
    """(mixup function or None, criterion): soft targets with mixup/cutmix, else label-smoothed CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if t.mixup > 0 or t.cutmix > 0:
        return (Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=num_classes), SoftTargetCrossEntropy())
    if t.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=t.label_smoothing)
    return None, nn.CrossEntropyLoss()


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


@torch.no_grad()
def evaluate_classifier(vit: nn.Module, test: Split, transform, batch_size: int, device: torch.device,
                        env: D.DistEnv, workers: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy and cross-entropy on the evaluation split; each rank scores a contiguous
    shard and the counts are summed (no padded duplicates)."""
    vit.eval()
    n = len(test)
    lo, hi = n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size
    shard = torch.utils.data.Subset(_Images(test, transform), range(lo, hi))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=workers)
    sums = torch.zeros(4, device=device)  # correct@1, correct@5, loss sum, count
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = vit(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        count = torch.tensor(float(y.numel()), device=device)
        sums += torch.stack([(top[:, 0] == y).sum().float(), (top == y[:, None]).any(1).sum().float(),
                             F.cross_entropy(logits, y, reduction="sum"), count])
    sums = D.all_reduce_sum(sums)
    count = max(float(sums[3]), 1.0)
    out = {"test_top1": float(sums[0]) / count, "test_loss": float(sums[2]) / count}
    if test.num_classes > 5:
        out["test_top5"] = float(sums[1]) / count
    return out
