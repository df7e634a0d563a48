"""Fine-tuning's images: timm's training augmentation, seeded per (seed, epoch, image), in the batches of
pre-training's ``BatchPlan``, served to the training loop as (step, batch) as pre-training's loaders.

Every random choice of a training image (crop, flip, RandAugment ops, erasing) is a function of
``(seed, epoch, index)``, and each rank's batches of an epoch are rows of one seeded permutation, so a
fine-tune stopped at any step and resumed sees exactly the images and augmentations it would have seen,
with any number of loader workers (as pre-training's file loader, ``imae.data.loader``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image

from imae.config.finetune import FinetuneConfig
from imae.data.decode import open_rgb
from imae.data.loader import (
    BatchPlan,
    PlanSampler,
    Unreadable,
    WorkerLoader,
    derive_seed,
    guarded,
    ignore_stop_signals,
    seeded,
)
from imae.errors import DataError
from imae.eval.eval_split import Split


class FinetuneImages(torch.utils.data.Dataset):
    """PIL images of a split (in memory or files) through a torchvision/timm transform -> (tensor, label).

    Index with ``i`` (evaluation: the transform is deterministic) or ``(epoch, i)`` (training: the
    transform's Python, NumPy and torch random draws are seeded by ``(seed, epoch, i)``; the caller's
    random states are left as they were). A file that cannot be read gives an ``Unreadable`` (batch them with
    ``collate``)."""

    def __init__(self, split: Split, transform, seed: int = 0) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (None, key)
        d = self.split.data
        try:
            im = (Image.fromarray(d.images[i].permute(1, 2, 0).numpy()) if d.images is not None
                  else open_rgb(d.files[i]))
        except DataError as e:
            return Unreadable(str(e))
        if epoch is None:
            return self.transform(im), int(d.labels[i])
        with seeded(derive_seed(self.seed, epoch, i, 0xF7)):
            return self.transform(im), int(d.labels[i])


@dataclass
class LabeledBatch:
    """images: float [B, C, H, W] normalised; labels: int64 [B] class indices, or after mixup/cutmix float
    [B, num_classes] soft targets."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: int = 0  # unreadable files dropped from this batch (--skip-corrupt)


def collate(items: list, skip_corrupt: bool = False, even: bool = False):
    """``FinetuneImages`` items -> ((images, labels) or None when none is left, files skipped), or the first
    ``Unreadable`` (unless ``skip_corrupt``). ``even``: a batch that lost files keeps an even number of images
    (mixup / cutmix pair the images of a batch)."""
    bad = [it for it in items if isinstance(it, Unreadable)]
    if bad and not skip_corrupt:
        return bad[0]
    kept = [it for it in items if not isinstance(it, Unreadable)]
    if even and bad and len(kept) % 2:
        kept = kept[:-1]
    if not kept:
        return None, len(bad)
    return torch.utils.data.default_collate(kept), len(bad)


class PlanLoader:
    """Seeded batches of augmented training images, as ``(step, LabeledBatch)`` on the CPU for the steps
    ``start ..`` of an epoch (the interface of pre-training's loaders, ``imae.data.loader``)."""

    def __init__(self, train: Split, transform, cfg: FinetuneConfig, rank: int, world_size: int,
                 pin_memory: bool) -> None:
        t, workers = cfg.finetune, cfg.data.num_workers
        self.plan = BatchPlan(train.labels, t.batch_size, world_size, cfg.seed, batch_setting="finetune.batch_size")
        self.sampler = PlanSampler(self.plan, rank)
        even = bool(t.mixup > 0 or t.cutmix > 0)
        self.loader = WorkerLoader(FinetuneImages(train, transform, cfg.seed), batch_sampler=self.sampler,
                                   num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                                   worker_init_fn=ignore_stop_signals,
                                   collate_fn=partial(collate, skip_corrupt=cfg.data.skip_corrupt, even=even))

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, LabeledBatch]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        for step, (item, skipped) in enumerate(guarded(self.loader), start=start):
            if item is not None:
                yield step, LabeledBatch(*item, skipped)


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
