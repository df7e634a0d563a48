"""The images an evaluation reads: one split, checked against the model, served as uint8 batches.

Small data sets are held in memory as uint8 ``[N, 3, H, W]`` at the model's size; ImageNet-scale trees
are read from their files (shorter side resized to ``size / 0.875``, centre crop, as MAE's evaluation).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imae.config.evaluate import EvalDataConfig
from imae.data.datasets import NATIVE_SIZE, ImageSet, load_split
from imae.data.loader import Unreadable, WorkerLoader, guarded
from imae.errors import ConfigError, DataError

EVAL_CROP = 0.875  # file-based sets: resize to size / 0.875, then centre crop (MAE's evaluation transform)


@dataclass
class Split:
    """One split of a data set at the model's image size, plus the key its features are cached under."""

    data: ImageSet
    size: int
    key: dict[str, Any]
    num_workers: int = 4

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def has_labels(self) -> bool:
        return self.data.has_labels

    def batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """index [M, K] rows of K image indices -> uint8 batches [b, K, 3, size, size], in order."""
        if self.data.images is not None:
            for start in range(0, index.shape[0], batch_size):
                yield self.data.images[index[start:start + batch_size]]
            return
        loader = WorkerLoader(_Files(self.data.files, self.size, index), batch_size=batch_size,
                              num_workers=self.num_workers, shuffle=False, collate_fn=_collate_files,
                              pin_memory=torch.cuda.is_available())  # for non_blocking copies
        yield from guarded(loader)  # an unreadable file: its one-line DataError, the workers ended

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """index [M] -> uint8 [M, 3, size, size] (the whole selection at once: for small selections)."""
        parts = [b[:, 0] for b in self.batches(index.view(-1, 1), 256)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[str], size: int, index: torch.Tensor) -> None:
        self.files, self.size, self.index = files, size, index

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, i: int):
        try:
            return torch.stack([read_center_crop(self.files[int(j)], self.size) for j in self.index[i]])
        except DataError as e:  # returned, not raised: a worker's exception would come wrapped in its traceback
            return Unreadable(str(e))


def _collate_files(items: list):
    bad = next((it for it in items if isinstance(it, Unreadable)), None)
    return bad if bad is not None else torch.stack(items)


def read_center_crop(path: str, size: int) -> torch.Tensor:
    """One image file -> uint8 [3, size, size]: shorter side to size / 0.875 (bicubic), centre crop."""
    from PIL import Image

    from imae.data.decode import open_rgb

    im = open_rgb(path)
    w, h = im.size
    short = round(size / EVAL_CROP)
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_size(cfg: EvalDataConfig, model_size: int) -> int:
    """The size the data set is read at; ``DataError`` when it differs from what the model takes."""
    if cfg.dataset is None:
        raise ConfigError("no data set to evaluate on: the checkpoint carries no training configuration; pass "
                          "--preset NAME (a pre-training preset names its data set) or --set data.dataset=NAME, "
                          "and --data-path DIR")
    size = cfg.img_size or NATIVE_SIZE.get(cfg.dataset) or model_size
    if size != model_size:
        raise DataError(f"{cfg.dataset} images are {size}x{size} but the checkpoint's model takes "
                        f"{model_size}x{model_size}; evaluate a checkpoint trained at {size}px, or resize the "
                        f"images with --set data.img_size={model_size}")
    return size


def load_eval_split(cfg: EvalDataConfig, split: str, model_size: int, progress: bool = True) -> Split:
    """``split`` ("train" or "eval") of the configured data set, checked: right image size, not empty."""
    size = image_size(cfg, model_size)
    cap = cfg.train_per_class if split == "train" else cfg.eval_per_class
    data = load_split(cfg.dataset, split, cfg.path, size, cfg.download, cfg.in_memory, cap, cfg.cache_dir,
                      cfg.skip_corrupt, progress=progress)
    if len(data) == 0:
        name = "evaluation" if split == "eval" else "training"
        raise DataError(f"the {name} split of {cfg.dataset}{f' under {cfg.path}' if cfg.path else ''} is empty"
                        + (f" (data.{'eval' if split == 'eval' else 'train'}_per_class={cap})" if cap == 0 else "")
                        + "; point --data-path at a folder with images in it")
    if data.images is not None and data.img_size != size:
        raise DataError(f"{cfg.dataset} images were read at {data.img_size}px, the model takes {size}px")
    return Split(data, size, split_key(data, size, cfg), cfg.num_workers)


def split_key(data: ImageSet, size: int, cfg: EvalDataConfig) -> dict[str, Any]:
    """What identifies the inputs: the data set, split, image content (or file list), size, normalisation."""
    h = hashlib.sha1()
    if data.images is not None:
        h.update(data.images.contiguous().numpy().tobytes())
    else:
        h.update("\n".join(os.path.realpath(f) for f in data.files).encode())
        h.update(f"crop={EVAL_CROP}".encode())
    h.update(data.labels.numpy().astype(np.int64).tobytes())
    return {"dataset": data.name, "split": data.split, "path": str(Path(cfg.path).resolve()) if cfg.path else None,
            "images": len(data), "content": h.hexdigest(), "img_size": size,
            "mean": list(data.mean), "std": list(data.std)}


def digest(obj: Any) -> str:
    """A stable hash of a JSON-able object or a tensor."""
    if isinstance(obj, torch.Tensor):
        return hashlib.sha1(obj.contiguous().cpu().numpy().tobytes()).hexdigest()
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
