"""Batches for training: a deterministic batch plan, and two loaders that serve it.

Every random choice of a step (augmentation, masks, alphas, partners) is drawn from a generator seeded
by ``(seed, epoch, step, rank)``, so a run resumed at any step, on any number of restarts, sees exactly
the same data as an uninterrupted run, and no RNG state has to be carried between steps.

- :class:`TensorLoader`: images held as uint8 on the training device, augmented in batches there.
- :class:`FileLoader`: ImageNet-scale trees, decoded by torch ``DataLoader`` workers (pinned memory,
  persistent workers), with per-sample augmentation seeded the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util  # noqa: F401  (its exit handler must be registered before ours)
import random
import signal
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from imae.data.augment import BatchAugment, EvalTransform, Normalize
from imae.data.datasets import ImageSet
from imae.data.decode import open_rgb
from imae.errors import DataError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, step, rank, ...), well mixed by NumPy's SeedSequence."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global CPU generators for the body (torchvision's and timm's
    per-image transforms draw from them), then restore their previous states."""
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


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: SIGTERM / SIGINT sent to a whole process group (torchrun
    stopping its workers, a scheduler's pre-emption, Ctrl-C) are for the main process, which checkpoints
    and stops; a loader worker killed by them would crash the main process first. Workers still end with
    the main process (the DataLoader's shutdown, its parent watchdog, and ``WorkerLoader``'s exit handler:
    multiprocessing's own ``terminate()`` at exit cannot end them)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class Unreadable:
    """What a loader's dataset returns for a file it cannot read, instead of raising: the main process then
    stops with the one-line ``DataError`` (or skips the file under ``--skip-corrupt``). An exception raised in
    a worker would reach the main process wrapped in the worker's traceback."""

    message: str


class WorkerLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` whose worker processes always end: ``guarded`` ends them when iterating fails, and
    any still running when the interpreter exits are ended then.

    Without this, an error left persistent workers running (the iterator stays referenced by the error's
    traceback), and since the workers ignore SIGTERM (``ignore_stop_signals``) the ``terminate()`` of
    multiprocessing's exit handler did not end them: its ``join()`` waited forever."""

    def _get_iterator(self):
        it = super()._get_iterator()
        if self.num_workers > 0:
            _LIVE.add(it)
        return it


_LIVE: weakref.WeakSet = weakref.WeakSet()


def end_workers(it) -> None:
    """End the worker processes of a DataLoader iterator: torch's orderly shutdown (a few seconds at most),
    then SIGKILL for any worker still alive (a worker ignores SIGTERM)."""
    with contextlib.suppress(Exception):
        it._shutdown_workers()
    for w in getattr(it, "_workers", ()):
        with contextlib.suppress(Exception):
            if w.is_alive():
                w.kill()
                w.join(timeout=5)


@atexit.register  # registered after multiprocessing's exit handler (imported above), so it runs before it
def _end_all_workers() -> None:
    for it in list(_LIVE):
        end_workers(it)


def guarded(loader: Iterable) -> Iterator:
    """Iterate ``loader`` (a ``WorkerLoader``): an ``Unreadable`` batch raises its ``DataError``; any error
    (and Ctrl-C) ends the workers before it propagates. A persistent loader starts new workers next time."""
    it = iter(loader)
    try:
        for item in it:
            if isinstance(item, Unreadable):
                raise DataError(item.message)
            yield item
    except (Exception, KeyboardInterrupt):
        end_workers(it)
        if getattr(loader, "_iterator", None) is it:
            loader._iterator = None
        raise


def step_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, epoch, step, rank))
    return g


@dataclass
class Batch:
    """images: float [B, C, H, W] normalised; labels: int64 [B] (-1 unknown); index: [B] into the split."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    generator: torch.Generator  # the step's generator: draw masks, alphas and partners from it
    skipped: int = 0  # unreadable files dropped from this batch (--skip-corrupt)


class BatchPlan:
    """Which images each step of an epoch uses, for every rank. Drops the last incomplete batch.

    ``class_pairs``: batches are built from same-class pairs (each class present in a batch at least
    twice), so an in-batch same-class partner always exists; each image is still used once per epoch
    (a class's odd image out sits the epoch out).
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, world_size: int = 1, seed: int = 0,
                 class_pairs: bool = False, batch_setting: str = "train.batch_size") -> None:
        self.labels = labels.cpu()
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.class_pairs = class_pairs
        if class_pairs and batch_size % 2:
            raise DataError(f"same-class pairing needs an even batch size per process, got {batch_size}")
        usable = self._usable()
        self.steps_per_epoch = usable // (batch_size * world_size)
        if self.steps_per_epoch == 0 and class_pairs and len(labels) >= batch_size * world_size:
            classes = int(torch.unique(self.labels[self.labels >= 0]).numel())
            raise DataError(f"same-class pairing is impossible here: the training split's {len(labels)} images "
                            f"fall in {classes} classes and only {usable} of them have a same-class partner (a "
                            f"class needs at least two images), fewer than one batch of {batch_size} x "
                            f"{world_size} process(es); use --set imae.same_class_p=random, or data with several "
                            f"images per class")
        if self.steps_per_epoch == 0:
            raise DataError(f"the training split has {len(labels)} images ({usable} usable), fewer than one batch "
                            f"of {batch_size} x {world_size} process(es); lower --set {batch_setting}")

    def _usable(self) -> int:
        if not self.class_pairs:
            return len(self.labels)
        counts = torch.bincount(self.labels[self.labels >= 0])
        return int((counts // 2 * 2).sum())

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Indices for the whole epoch, [steps, world_size * batch_size]."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0xDA7A))
        if self.class_pairs:
            pairs = []
            for c in torch.unique(self.labels):
                idx = torch.nonzero(self.labels == c).flatten()
                idx = idx[torch.randperm(len(idx), generator=g)]
                pairs.append(idx[: len(idx) // 2 * 2].view(-1, 2))
            pairs_t = torch.cat(pairs)
            order = pairs_t[torch.randperm(len(pairs_t), generator=g)].flatten()
        else:
            order = torch.randperm(len(self.labels), generator=g)
        n = self.steps_per_epoch * self.batch_size * self.world_size
        return order[:n].view(self.steps_per_epoch, -1)

    def rank_order(self, epoch: int, rank: int) -> torch.Tensor:
        """This rank's share: [steps, batch_size] (contiguous slices keep pairs together)."""
        b = self.batch_size
        return self.epoch_order(epoch)[:, rank * b:(rank + 1) * b]


class TensorLoader:
    """Serves a plan from uint8 images held on ``device``; augmentation runs batched on that device."""

    def __init__(self, data: ImageSet, plan: BatchPlan, transform: BatchAugment | EvalTransform,
                 device: torch.device, rank: int = 0, seed: int = 0) -> None:
        if data.images is None:
            raise ValueError("TensorLoader needs an in-memory ImageSet")
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.plan, self.transform, self.device = plan, transform, device
        self.rank, self.seed = rank, seed

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Batch]]:
        """(step, batch) for the steps ``start ..`` of ``epoch``."""
        order = self.plan.rank_order(epoch, self.rank).to(self.device)
        for step in range(start, len(self)):
            g = step_generator(self.seed, epoch, step, self.rank, self.device)
            idx = order[step]
            yield step, Batch(self.transform(self.images[idx], g), self.labels[idx], idx, g)


class _FileDataset(torch.utils.data.Dataset):
    """Reads ``files[i]`` for key (epoch, i); the augmentation is seeded by (seed, epoch, i)."""

    def __init__(self, data: ImageSet, size: int, scale, ratio, hflip: bool, seed: int, skip_corrupt: bool) -> None:
        from torchvision import transforms as T

        self.files, self.labels, self.seed, self.skip_corrupt = data.files, data.labels, seed, skip_corrupt
        ops = [T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC)]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        ops += [T.PILToTensor()]
        self.transform = T.Compose(ops)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        try:
            im = open_rgb(self.files[i])
        except DataError as e:
            return None if self.skip_corrupt else Unreadable(str(e))
        with seeded(derive_seed(self.seed, epoch, i, 0xF11E)):
            x = self.transform(im)
        return x, int(self.labels[i]), i


def _collate(items):
    bad = next((it for it in items if isinstance(it, Unreadable)), None)
    if bad is not None:
        return bad
    kept = [it for it in items if it is not None]
    if not kept:
        return None, len(items)
    x = torch.stack([k[0] for k in kept])
    y = torch.tensor([k[1] for k in kept])
    i = torch.tensor([k[2] for k in kept])
    return (x, y, i), len(items) - len(kept)


class PlanSampler:
    """Batch sampler over a plan: the rank's batches of ``epoch`` from step ``start`` on, as keys
    ``(epoch, i)``; ``epoch`` and ``start`` are set before each pass (it lives in the main process, so
    persistent workers see the changes)."""

    def __init__(self, plan: BatchPlan, rank: int) -> None:
        self.plan, self.rank, self.epoch, self.start = plan, rank, 0, 0

    def __len__(self) -> int:
        return self.plan.steps_per_epoch - self.start

    def __iter__(self):
        for row in self.plan.rank_order(self.epoch, self.rank)[self.start:]:
            yield [(self.epoch, int(i)) for i in row]


class FileLoader:
    """Serves a plan from image files with DataLoader workers (ImageNet scale)."""

    def __init__(self, data: ImageSet, plan: BatchPlan, size: int, device: torch.device, rank: int = 0,
                 seed: int = 0, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = True,
                 num_workers: int = 4, skip_corrupt: bool = False) -> None:
        self.sampler = PlanSampler(plan, rank)
        self.loader = WorkerLoader(
            _FileDataset(data, size, scale, ratio, hflip, seed, skip_corrupt), batch_sampler=self.sampler,
            num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None,
            worker_init_fn=ignore_stop_signals)
        self.mean, self.std = data.mean, data.std
        self.normalize = Normalize(data.mean, data.std)
        self.plan, self.device, self.rank, self.seed = plan, device, rank, seed

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Batch]]:
        """(step, batch) for the steps ``start ..`` of ``epoch``."""
        self.sampler.epoch, self.sampler.start = epoch, start
        for step, (item, skipped) in enumerate(guarded(self.loader), start=start):
            g = step_generator(self.seed, epoch, step, self.rank, self.device)
            if item is None:
                continue
            x, y, i = item
            # all three from pinned memory without waiting: a blocking copy here would stall every step
            x = self.normalize(x.to(self.device, non_blocking=True))
            y, i = y.to(self.device, non_blocking=True), i.to(self.device, non_blocking=True)
            yield step, Batch(x, y, i, g, skipped)


def build_train_loader(data: ImageSet, batch_size: int, img_size: int, device: torch.device, *, seed: int,
                       rank: int = 0, world_size: int = 1, class_pairs: bool = False,
                       scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = True, num_workers: int = 4,
                       skip_corrupt: bool = False) -> TensorLoader | FileLoader:
    plan = BatchPlan(data.labels, batch_size, world_size, seed, class_pairs)
    if data.images is not None:
        aug = BatchAugment(img_size, data.mean, data.std, scale, ratio, hflip)
        return TensorLoader(data, plan, aug, device, rank, seed)
    return FileLoader(data, plan, img_size, device, rank, seed, scale, ratio, hflip, num_workers, skip_corrupt)
