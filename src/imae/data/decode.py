"""Decode image files once into a ``uint8`` tensor, cached on disk, with clear errors for broken files."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imae.checksum import tensor_checksum
from imae.errors import DataError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMAE_CACHE_DIR") or Path.home() / ".cache" / "imae")


def open_rgb(path: str) -> Image.Image:
    """Read one image as RGB (grayscale, palette, CMYK and RGBA are converted); DataError names a broken file."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):  # 16-bit greyscale (I;16*, or I from a PNG): convert() would clip to white
                im = _sixteen_bit_to_rgb(im, path)
            if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, im).convert("RGB")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        why = "empty file" if size == 0 else f"{type(e).__name__}: {e}"
        raise DataError(f"cannot decode image {path} ({why}); remove or replace it, "
                        f"or pass --skip-corrupt to skip unreadable files") from None


def _sixteen_bit_to_rgb(im: Image.Image, path: str) -> Image.Image:
    """A 16-bit greyscale image scaled to 8 bits (65535 -> 255), as RGB; other integer ranges are refused."""
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"cannot decode image {path} (integer pixels outside 0..65535, mode {im.mode}); convert it "
                        f"to 8-bit RGB, or pass --skip-corrupt to skip it")
    u8 = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
    return Image.fromarray(u8).convert("RGB")  # uint8 [H, W]: mode L


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
        if hit is not None and "sha1" in hit:
            damage = "checksum mismatch"
        if damage is not None:  # (an entry of an older imae, without a checksum, is replaced silently)
            tqdm.write(f"warning: the decoded-image cache {cache} is damaged ({damage}); decoding the images "
                       f"again", file=sys.stderr)
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
        _save_atomic({"images": images, "kept": kept, "skipped": skipped, "sha1": tensor_checksum(images, kept)},
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


def _save_atomic(obj: dict, path: Path) -> None:
    """Write the cache file through a temporary file. The cache is an optimisation: when it cannot be written
    (a read-only or full disk; torch.save reports the latter as a RuntimeError), warn once, remove the
    partial file and go on."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if "images" not in _WARNED:
            _WARNED.add("images")
            tqdm.write(f"warning: cannot write the decoded-image cache in {path.parent} ({error_reason(e)}); going "
                       f"on without it (set data.cache_dir to another folder, or none)", file=sys.stderr)


def error_reason(e: BaseException) -> str:
    """The reason an OSError or RuntimeError gives, in a few words."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__
