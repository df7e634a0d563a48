"""Decode image files once into a ``uint8`` tensor, cached on disk, with clear errors for broken files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imae.atomic import save_atomic, write_reason
from imae.checksum import tensor_checksum
from imae.errors import DataError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMAE_CACHE_DIR") or Path.home() / ".cache" / "imae")


def open_rgb(path: str) -> Image.Image:
    """Read one image as RGB (grayscale, palette, CMYK and RGBA are converted); DataError names a broken file.

    Only a regular file is read: a named pipe, socket or device under an image's name is refused at once
    (opening a pipe would wait for as long as nothing writes to it)."""
    try:
        with _open_regular(path) as f, Image.open(f) as im:
            im.load()
            if im.mode.startswith("I"):  # 16/32-bit integer greyscale: convert() would clip to white
                im = _integer_to_rgb(im, path)
            if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, im).convert("RGB")
            return im.convert("RGB")
    except Image.DecompressionBombError as e:  # not an OSError: Pillow's guard against huge images
        raise DataError(f"cannot decode image {path} (too large: {str(e).rstrip('.')}); remove or shrink it, or pass "
                        f"--skip-corrupt to skip unreadable files") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError(f"cannot read image {path}: it is gone (deleted or moved since the data set was listed); "
                            f"restore it, or pass --skip-corrupt to skip unreadable files") from None
        size = os.path.getsize(path) if os.path.exists(path) else -1
        why = "empty file" if size == 0 else f"{type(e).__name__}: {e}"
        raise DataError(f"cannot decode image {path} ({why}); remove or replace it, "
                        f"or pass --skip-corrupt to skip unreadable files") from None


def _open_regular(path: str):
    """``path`` opened for reading if it is a regular file (after links), else DataError. The open itself does
    not block (O_NONBLOCK), so a named pipe is refused instead of waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"cannot read image {path}: it is a {file_kind(st.st_mode)}, not a regular file; remove "
                            f"it, or pass --skip-corrupt to skip unreadable files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages)."""
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def _integer_to_rgb(im: Image.Image, path: str) -> Image.Image:
    """A 16- or 32-bit integer greyscale image as 8-bit RGB.

    16-bit storage (``I;16*``, a PNG, a TIFF of 16 bits per sample) is scaled 65535 -> 255. 32-bit storage
    (``I``: a TIFF of 32 bits per sample) has no standard white level: values within 0..255 are an 8-bit image
    stored wide and are taken as they are; any other range is refused, since only the writer knows its white
    level (stretching each image to its own range would change the contrast image by image)."""
    a = np.asarray(im).astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if im.mode.startswith("I;16") or im.format == "PNG" or _tiff_bits(im) in (8, 16):
        if lo < 0 or hi > 65535:
            raise DataError(f"cannot decode image {path} (integer pixels outside 0..65535, mode {im.mode}); convert "
                            f"it to 8-bit RGB, or pass --skip-corrupt to skip it")
        u8 = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
    elif lo >= 0 and hi <= 255:
        u8 = a.astype(np.uint8)
    else:
        raise DataError(f"cannot decode image {path} (32-bit integer pixels, mode {im.mode}, with values {lo}..{hi}: "
                        f"their white level is not known); convert it to 8-bit or 16-bit, or pass --skip-corrupt to "
                        f"skip it")
    return Image.fromarray(u8).convert("RGB")  # uint8 [H, W]: mode L


def _tiff_bits(im: Image.Image) -> int | None:
    """Bits per sample a TIFF declares (None for other formats)."""
    bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square; no-op at the right size."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _decode_one(path: str, size: int) -> np.ndarray:
    return np.asarray(resize_center_crop(open_rgb(path), size), dtype=np.uint8)


def decode_files(files: list[str], size: int, cache_dir: str | Path | None = None, skip_corrupt: bool = False,
                 progress: bool = True, desc: str = "decoding",
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``files`` to uint8 [N, 3, size, size].

    Returns (images, kept, skipped): ``kept`` indexes the files that decoded, ``skipped`` lists the rest
    (only with ``skip_corrupt``; otherwise the first broken file raises DataError). The result is cached
    under ``cache_dir`` keyed by the files' paths, sizes and modification times.
    """
    cache = _cache_path(files, size, skip_corrupt, cache_dir)
    if cache is not None and cache.is_file():
        try:
            hit = torch.load(cache, weights_only=True)
            images, kept, damage = hit["images"], hit["kept"], None
        except Exception as e:  # a partial or damaged cache file: decode again
            hit, damage = None, f"unreadable: {type(e).__name__}"
        # torch.load does not check the zip CRCs: damaged bytes would load as wrong pixels
        if hit is not None and hit.get("sha1") == tensor_checksum(images, kept):
            return images, kept, list(hit["skipped"])
        tqdm.write(f"warning: the decoded-image cache {cache} is damaged ({damage or 'checksum mismatch'}); "
                   f"decoding the images again", file=sys.stderr)
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    skipped: list[str] = []

    def work(i: int) -> None:
        try:
            out[i] = _decode_one(files[i], size)
            ok[i] = True
        except DataError:
            if not skip_corrupt:
                raise
            skipped.append(files[i])

    threads = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(threads) as pool:
        for _ in tqdm(pool.map(work, range(len(files))), total=len(files), desc=desc,
                      disable=not progress or len(files) < 2000, leave=False):
            pass
    kept = torch.from_numpy(np.nonzero(ok)[0])
    if len(kept) == 0:
        raise DataError(f"none of the {len(files)} images could be decoded (first: {files[0] if files else '-'})")
    images = torch.from_numpy(out[ok]).permute(0, 3, 1, 2).contiguous()
    skipped.sort()
    if cache is not None:
        _save_cache({"images": images, "kept": kept, "skipped": skipped, "sha1": tensor_checksum(images, kept)},
                     cache)
    return images, kept, skipped


def _cache_path(files: list[str], size: int, skip_corrupt: bool, cache_dir: str | Path | None) -> Path | None:
    if cache_dir == "none" or not files:
        return None
    h = hashlib.sha1(json.dumps([CACHE_VERSION, size, skip_corrupt]).encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(f)}\0missing\n".encode())
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / f"images-{size}px-{len(files)}-{h.hexdigest()[:16]}.pt"


_WARNED: set[str] = set()


def _save_cache(obj: dict, path: Path) -> None:
    """Write the cache file atomically. The cache is an optimisation: when it cannot be written (a read-only
    or full disk), warn once and go on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(obj, path)
    except OSError as e:
        if "images" not in _WARNED:
            _WARNED.add("images")
            tqdm.write(f"warning: cannot write the decoded-image cache in {path.parent} ({write_reason(e)}); going "
                       f"on without it (set data.cache_dir to another folder, or none)", file=sys.stderr)
