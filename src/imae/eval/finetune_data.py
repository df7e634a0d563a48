"""Fine-tuning's images: timm's training augmentation, seeded per (seed, epoch, image), and the batch order.

Every random choice of a training image (crop, flip, RandAugment ops, erasing) is a function of
``(seed, epoch, index)``, and each rank's batches of an epoch are rows of one seeded permutation, so a
fine-tune stopped at any step and resumed sees exactly the images and augmentations it would have seen,
with any number of loader workers (as pre-training's file loader, ``imae.data.loader``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from imae.data.loader import derive_seed, ignore_stop_signals
from imae.errors import DataError
from imae.eval.config import FinetuneConfig
from imae.eval.data import Split


class FinetuneImages(torch.utils.data.Dataset):
    """PIL images of a split (in memory or files) through a torchvision/timm transform -> (tensor, label).

    Index with ``i`` (evaluation: the transform is deterministic) or ``(epoch, i)`` (training: the
    transform's Python, NumPy and torch random draws are seeded by ``(seed, epoch, i)``; the caller's
    random states are left as they were)."""

    def __init__(self, split: Split, transform, seed: int = 0) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]):
        from PIL import Image

        from imae.data.decode import open_rgb

        epoch, i = key if isinstance(key, tuple) else (None, key)
        d = self.split.data
        im = (Image.fromarray(d.images[i].permute(1, 2, 0).numpy()) if d.images is not None
              else open_rgb(d.files[i]))
        if epoch is None:
            return self.transform(im), int(d.labels[i])
        with seeded(derive_seed(self.seed, epoch, i, 0xF7)):
            return self.transform(im), int(d.labels[i])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global CPU generators (timm's transforms draw from all three) for
    the body, then restore their previous states."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class EpochBatches:
    """Batch sampler: the rank's batches of an epoch as lists of keys ``(epoch, i)``.

    Each epoch draws one permutation of the split from ``(seed, epoch)``; the first ``steps x batch x
    world`` images form ``steps`` global batches (the rest is dropped, as ``drop_last``), rank r takes
    its ``batch`` columns of each. ``epoch`` and ``start`` (batches already done, after a resume) are set
    before each pass; the sampler lives in the main process, so persistent workers see the changes."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.steps = n // (batch_size * world_size)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0xBA7C))
        b, w = self.batch_size, self.world_size
        rows = torch.randperm(self.n, generator=g)[: self.steps * b * w].view(self.steps, w * b)
        for row in rows[self.start:, self.rank * b:(self.rank + 1) * b].tolist():
            yield [(self.epoch, i) for i in row]


def training_loader(train: Split, transform, cfg: FinetuneConfig, rank: int, world_size: int,
                    pin_memory: bool) -> torch.utils.data.DataLoader:
    """Seeded batches of augmented training images (``loader.batch_sampler`` is the ``EpochBatches``)."""
    t, workers = cfg.finetune, cfg.data.num_workers
    batches = EpochBatches(len(train), t.batch_size, rank, world_size, cfg.seed)
    if batches.steps == 0:
        raise DataError(f"{len(train)} training images are fewer than one batch of {t.batch_size} x "
                        f"{world_size} process(es); lower --set finetune.batch_size")
    return torch.utils.data.DataLoader(FinetuneImages(train, transform, cfg.seed), batch_sampler=batches,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                                       worker_init_fn=ignore_stop_signals)


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
