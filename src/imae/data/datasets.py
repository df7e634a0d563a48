"""Data sets: where the images of each split come from.

``load_split`` returns an :class:`ImageSet`: either decoded ``uint8`` images held in memory (digits,
CIFAR, Tiny-ImageNet, small ImageFolder trees) or a list of files read by loader workers
(ImageNet-scale trees). Sources:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes) scaled to
  16x16 RGB; needs no download. Every fifth image is in the test split.
- ``cifar10`` / ``cifar100``: torchvision's pickled release under ``path`` (``--download`` fetches it),
  or an ImageFolder tree (``path/train/<class>/*.jpg``) such as the JPEG copy of CIFAR-10.
- ``imagefolder``: ``path/train/<class>/...`` and ``path/val`` or ``path/test`` (ImageNet layout); a
  flat ``path/train/*.jpg`` is read as unlabeled.
- ``tiny-imagenet``: the original layout (``train/<wnid>/images``, flat ``val/images`` with
  ``val/val_annotations.txt``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imae.console import info
from imae.data.decode import decode_files
from imae.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# per-channel mean and std of pixels in [0, 1]
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053, 0.3053, 0.3053), (0.3762, 0.3762, 0.3762)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NATIVE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "tiny-imagenet": 64}
DATASETS = tuple(NORMALIZATION)


@dataclass
class ImageSet:
    """One split. Exactly one of ``images`` (uint8 [N, 3, H, W]) and ``files`` is set.

    ``labels``: int64 [N] (-1 where unknown); ``skipped``: files that could not be decoded.
    """

    name: str
    split: str
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: torch.Tensor | None = None
    files: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.classes)) and bool((self.labels >= 0).all())

    @property
    def img_size(self) -> int | None:
        return None if self.images is None else int(self.images.shape[-1])


def load_split(dataset: str, split: str, path: str | None = None, img_size: int | None = None,
               download: bool = False, in_memory: bool | None = None, max_per_class: int | None = None,
               cache_dir: str | None = None, skip_corrupt: bool = False, progress: bool = True) -> ImageSet:
    """Load ``split`` ("train" or "eval": the val/test split) of a data set.

    Images held in memory are resized (shorter side) and centre-cropped to ``img_size`` when they differ.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}; available: {', '.join(DATASETS)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    mean, std = NORMALIZATION[dataset]
    size = img_size or NATIVE_SIZE.get(dataset)
    if dataset == "digits":
        images, labels, classes = _digits(split)
        images, labels = _cap_per_class_tensor(images, labels, max_per_class)
        images = resize_images(images, size)
        return ImageSet(dataset, split, labels, classes, mean, std, images=images)
    root = _existing_root(dataset, path, download)
    if dataset in ("cifar10", "cifar100") and not _is_imagefolder(root / "train"):
        images, labels, classes = _cifar(dataset, root, split, download)
        images, labels = _cap_per_class_tensor(images, labels, max_per_class)
        return ImageSet(dataset, split, labels, classes, mean, std, images=resize_images(images, size))
    if dataset == "tiny-imagenet":
        files, labels, classes = _tiny_imagenet_files(root, split)
    else:
        files, labels, classes = _imagefolder_files(root, split)
    files, labels = _cap_per_class_files(files, labels, max_per_class)
    if in_memory is None:
        in_memory = dataset != "imagefolder" or (size is not None and size <= 64)
    if not in_memory:
        return ImageSet(dataset, split, torch.tensor(labels), classes, mean, std, files=files)
    if size is None:
        raise DataError(f"set an image size (--set data.img_size=N) to hold {dataset} in memory")
    images, kept, skipped = decode_files(files, size, cache_dir=cache_dir, skip_corrupt=skip_corrupt,
                                         progress=progress, desc=f"decoding {dataset} {split}")
    return ImageSet(dataset, split, torch.tensor(labels)[kept], classes, mean, std, images=images,
                    skipped=skipped)


# ----------------------------------------------------------------------------------------------
# sources


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0)).round().to(torch.uint8)  # [N, 8, 8]
    y = torch.from_numpy(d.target.astype(np.int64))
    test = torch.arange(len(y)) % 5 == 0
    keep = test if split == "eval" else ~test
    x = x[keep].unsqueeze(1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).expand(-1, 3, -1, -1)
    return x.contiguous(), y[keep], [str(i) for i in range(10)]


def _cifar(name: str, root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        hint = "pass --download to fetch it" if not download else "check the folder and your connection"
        raise DataError(f"{name} not found in {root} (neither torchvision's release of it nor an ImageFolder "
                        f"tree); {hint}, or point --data-path at an ImageFolder tree with train/<class>/ "
                        f"folders") from None
    except OSError as e:
        raise DataError(f"cannot read {name} under {root}: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def _imagefolder_files(root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    folder = _split_folder(root, split)
    if not folder.is_dir():
        want = "train/" if split == "train" else "val/ or test/"
        raise DataError(f"{root} has no {want} folder; an ImageFolder tree needs {want}<class>/<image> "
                        f"(got: {', '.join(sorted(p.name for p in root.iterdir())[:8]) or 'an empty folder'})")
    own = _class_dirs(folder)
    unread = _Unread()
    if not own:  # a flat folder of images: no labels
        files = [str(folder / n) for n in _scan(str(folder), unread)[0]]
        unread.note(folder)
        if not files:
            raise DataError(f"no images found in {folder} (expected {folder}/<class>/<image>.jpg or "
                            f"{folder}/<image>.jpg, extensions {', '.join(IMG_EXTENSIONS)})")
        return files, [-1] * len(files), []
    # one class list for every split (the union of their class folders, sorted), so that a class folder
    # present in one split only cannot shift the labels of the other
    classes = sorted(set(own).union(*(_class_dirs(_split_folder(root, s)) for s in ("train", "eval"))))
    files, labels, per_class = [], [], {}
    loops: list[str] = []
    for label, c in enumerate(classes):
        if c not in own:
            per_class[c] = 0
            continue
        found = _walk_images(folder / c, loops, unread)
        files += found
        labels += [label] * len(found)
        per_class[c] = len(found)
    if not files:
        raise DataError(f"no images found in {folder} (expected {folder}/<class>/<image>.jpg, "
                        f"extensions {', '.join(IMG_EXTENSIONS)})")
    if split == "eval":
        train = _split_folder(root, "train")
        extra = [c for c in classes if per_class[c] and not _has_images(train / c)]
        if extra:
            raise DataError(f"{folder} has images of class(es) {', '.join(extra[:5])}"
                            f"{' ...' if len(extra) > 5 else ''} that {train} has none of; the evaluation classes "
                            f"must be training classes: add their training images or remove those folders")
    unread.note(folder)
    empty = [c for c in classes if not per_class[c]]
    if empty:
        _note(f"note: {len(empty)} class(es) have no images in {folder}: {', '.join(empty[:5])}"
              f"{' ...' if len(empty) > 5 else ''} (they keep their place in the class list of {len(classes)})")
    if loops:
        _note(f"note: skipped {len(loops)} link(s) under {folder} leading to a folder already read (a loop or a "
              f"duplicate), e.g. {loops[0]}")
    return files, labels, classes


def _split_folder(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    return next((root / s for s in ("val", "test") if (root / s).is_dir()), root / "val")


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []


class _Unread:
    """Entries of a data folder that are not read: non-regular files under an image's name (named pipes,
    sockets, devices: opening a pipe would wait for a writer) and files of other types (.gif, .txt, ...)."""

    def __init__(self) -> None:
        self.special: list[str] = []
        self.other: list[str] = []

    def note(self, folder: Path) -> None:
        if self.special:
            _note(f"note: skipped {len(self.special)} entr{'y' if len(self.special) == 1 else 'ies'} under {folder} "
                  f"that {'is' if len(self.special) == 1 else 'are'} not a regular file (named pipe, socket or "
                  f"device), e.g. {self.special[0]}")
        if self.other:
            kinds: dict[str, int] = {}
            for f in self.other:
                ext = os.path.splitext(f)[1].lower() or "no extension"
                kinds[ext] = kinds.get(ext, 0) + 1
            shown = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
            _note(f"note: skipped {len(self.other)} file(s) under {folder} that are not of an image type read here "
                  f"({shown}{', ...' if len(kinds) > 5 else ''}; read: {' '.join(IMG_EXTENSIONS)}), "
                  f"e.g. {self.other[0]}")


def _scan(folder: str, unread: _Unread) -> tuple[list[str], list[str]]:
    """(image file names, sub-folder paths) of one folder, sorted; what is not read goes to ``unread``."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [], []
    names, subdirs = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows links
        except OSError:
            is_dir = False
        if is_dir:
            subdirs.append(e.path)
        elif not e.name.lower().endswith(IMG_EXTENSIONS):
            unread.other.append(e.path)
        elif _regular_or_missing(e):
            names.append(e.name)
        else:
            unread.special.append(e.path)
    return names, subdirs


def _regular_or_missing(e: os.DirEntry) -> bool:
    """A regular file (after links), or a dangling link (kept: reading it names it as unreadable)."""
    try:
        return e.is_file() or stat.S_ISREG(e.stat().st_mode)
    except OSError:
        return True


def _walk_images(top: Path, loops: list[str], unread: _Unread | None = None) -> list[str]:
    """Image files under ``top``, sorted; directory links are followed once: a link to a folder that was
    already read (a loop back into the tree, or a second way to the same folder) is skipped and listed.
    Only regular files are listed; the rest goes to ``unread``."""
    unread = unread if unread is not None else _Unread()
    seen = {os.path.realpath(top)}
    found = []
    stack = [str(top)]
    while stack:  # depth first, sub-folders in name order (as os.walk)
        folder = stack.pop()
        names, subdirs = _scan(folder, unread)
        keep = []
        for d in subdirs:
            real = os.path.realpath(d)
            if real in seen:
                loops.append(d)
            else:
                seen.add(real)
                keep.append(d)
        found.append((folder, names))
        stack.extend(reversed(keep))
    return [os.path.join(d, n) for d, names in sorted(found) for n in names]


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and bool(_walk_images(folder, []))


def _note(msg: str) -> None:
    info(msg, int(os.environ.get("RANK", "0")) == 0)


def _tiny_imagenet_files(root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    wnids_file = root / "wnids.txt"
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root} is not a Tiny-ImageNet folder: it has no train/ (expected the original "
                        f"tiny-imagenet-200 layout)")
    classes = (wnids_file.read_text().split() if wnids_file.is_file()
               else sorted(d.name for d in train.iterdir() if d.is_dir()))
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    if split == "train":
        unread = _Unread()
        for c in classes:
            folder = train / c / "images"
            folder = folder if folder.is_dir() else train / c
            for n in _scan(str(folder), unread)[0] if folder.is_dir() else []:
                files.append(str(folder / n))
                labels.append(index[c])
        unread.note(train)
    else:
        ann = root / "val" / "val_annotations.txt"
        if ann.is_file():
            for line in ann.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    files.append(str(root / "val" / "images" / parts[0]))
                    labels.append(index[parts[1]])
        elif (root / "val").is_dir():  # already re-arranged into val/<wnid>/...
            return _imagefolder_files(root, "eval")
    if not files:
        raise DataError(f"no images found for the {split} split of Tiny-ImageNet under {root}")
    return files, labels, classes


# ----------------------------------------------------------------------------------------------
# helpers


def _existing_root(dataset: str, path: str | None, download: bool = False) -> Path:
    if not path:
        raise DataError(f"{dataset} needs --data-path DIR (the folder that holds it)"
                        + (" or --download" if dataset.startswith("cifar") else ""))
    root = Path(path).expanduser()
    if not root.exists():
        if dataset.startswith("cifar") and download:
            root.mkdir(parents=True, exist_ok=True)  # torchvision downloads into it
            return root
        hint = " or pass --download to fetch it there" if dataset.startswith("cifar") else ""
        raise DataError(f"data path {root} does not exist; point --data-path at the {dataset} folder{hint}")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    return root


def _is_imagefolder(folder: Path) -> bool:
    return folder.is_dir() and any(d.is_dir() for d in folder.iterdir())


def _cap_per_class_tensor(images: torch.Tensor, labels: torch.Tensor,
                          cap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if cap is None:
        return images, labels
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        keep[torch.nonzero(labels == c).flatten()[:cap]] = True
    return images[keep], labels[keep]


def _cap_per_class_files(files: list[str], labels: list[int], cap: int | None) -> tuple[list[str], list[int]]:
    if cap is None:
        return files, labels
    seen: dict[int, int] = {}
    out_f, out_l = [], []
    for f, y in zip(files, labels):
        if seen.get(y, 0) < cap:
            seen[y] = seen.get(y, 0) + 1
            out_f.append(f)
            out_l.append(y)
    return out_f, out_l


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 [N, 3, h, w] -> [N, 3, size, size] (bilinear, antialiased) when the size differs."""
    if size is None or (images.shape[-1] == size and images.shape[-2] == size):
        return images
    import torch.nn.functional as F

    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
