"""Mask-free feature extraction of a frozen encoder, cached on disk.

Every evaluation reads the encoder through :func:`extract`: eval mode, ``torch.inference_mode``, no
masking (``forward_features``), batched, with a progress bar. Both poolings are kept from one pass:
``cls`` (the cls token after the final norm) and ``mean`` (the mean of the patch tokens). Inputs are
either clean images of a split or mixtures ``alpha * x_sub + (1 - alpha) * x_dom`` of image pairs
(mixed after normalisation, as in training).

Results are cached under ``$IMAE_CACHE_DIR/features`` keyed by the checkpoint (its content hash and
head count: a different checkpoint copied over with its mtime kept is not mistaken for it), the split
(data set, split, image content hash, size, normalisation) and the inputs (pairs hash, alpha); a cached
result equals the freshly computed one bit for bit.

``layers`` (block numbers, 1 = the first; see :mod:`imae.eval.depth`) reads the output of those blocks, each
with the final norm applied, from one pass; each layer is cached under its own key (the last block's key is
the encoder output's, as before layers existed).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imae.atomic import save_atomic, write_reason
from imae.checksum import tensor_checksum
from imae.console import info, progress
from imae.data.augment import Normalize
from imae.data.decode import default_cache_dir
from imae.data.mixing import mix
from imae.eval.eval_split import Split, digest
from imae.models.mae import MaskedAutoencoder
from imae.runtime import precision

FEATURE_VERSION = 1  # bump when extraction changes, so that old cache entries are not reused


@dataclass
class Features:
    """Pooled encoder outputs of M inputs: ``cls`` and ``mean`` float32 [M, D]."""

    cls: torch.Tensor
    mean: torch.Tensor
    seconds: float = 0.0  # extraction time (0 when read from the cache)
    cached: bool = False

    def pooled(self, pool: str) -> torch.Tensor:
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        return self.cls if pool == "cls" else self.mean


@dataclass
class FeatureCache:
    """Feature files ``<sha1 of key>.pt`` in ``folder``; ``enabled=False`` reads and writes nothing."""

    folder: Path = field(default_factory=lambda: default_cache_dir() / "features")
    enabled: bool = True
    _warned: bool = field(default=False, init=False, repr=False, compare=False)  # a failed write warns once

    @classmethod
    def from_config(cls, enabled: bool, folder: str | None) -> FeatureCache:
        return cls(Path(folder) if folder else default_cache_dir() / "features", enabled)

    def _file(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{digest(key)}.pt"

    def get(self, key: dict[str, Any]) -> Features | None:
        if not self.enabled:
            return None
        f = self._file(key)
        if not f.is_file():
            return None
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
            damage = "unreadable" if not isinstance(obj, dict) else None
        except Exception as e:  # a damaged entry is recomputed
            obj, damage = None, f"unreadable: {type(e).__name__}"
        if damage is None and obj.get("key") != _jsonable(key):
            return None
        # torch.load does not check the zip CRCs: damaged bytes inside a tensor would load as wrong features
        if damage is None and obj.get("sha1") != tensor_checksum(obj.get("cls"), obj.get("mean")):
            damage = "checksum mismatch"
        if damage is not None:
            info(f"warning: the feature cache entry {f} is damaged ({damage}); computing the features again")
            return None
        return Features(obj["cls"], obj["mean"], cached=True)

    def put(self, key: dict[str, Any], feats: Features) -> None:
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_atomic({"key": _jsonable(key), "cls": feats.cls, "mean": feats.mean,
                         "sha1": tensor_checksum(feats.cls, feats.mean)}, self._file(key))
        except OSError as e:  # read-only or full: costs the next run time
            if not self._warned:
                self._warned = True
                info(f"warning: cannot write the feature cache in {self.folder} ({write_reason(e)}); going on "
                     f"without it (set features.cache_dir to another folder, or features.cache=false)")


def _jsonable(key: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(key, sort_keys=True, default=str))


@contextlib.contextmanager
def eval_precision(device: torch.device | str):
    """bf16 autocast with TF32 matmuls on CUDA (as training); bf16 autocast on a CPU with bf16 units
    (:mod:`imae.runtime.precision`); nothing elsewhere, so results on other CPUs are unchanged."""
    if torch.device(device).type != "cuda":
        with precision.autocast(device):
            yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def encode(model: MaskedAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images x [B, C, H, W] -> (cls [B, D], mean of patch tokens [B, D]), mask-free."""
    tokens = model.forward_features(x)  # [B, 1+L, D]
    return tokens[:, 0], tokens[:, 1:].mean(dim=1)


def encode_layers(model: MaskedAutoencoder, x: torch.Tensor,
                  layers: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Normalised images x [B, C, H, W] -> {k: (cls [B, D], mean of patch tokens [B, D])} of block k's output
    with the final norm, for every k of ``layers``, mask-free and from one pass (block ``depth``: the
    encoder's output, ``forward_features``, computed by the same operations)."""
    out = model.encode_layers(model.embed_patches(x), layers)
    return {k: (t[:, 0], t[:, 1:].mean(dim=1)) for k, t in out.items()}


def extract(model: MaskedAutoencoder, split: Split, fingerprint: str, *, pairs: torch.Tensor | None = None,
            alpha: float | None = None, batch_size: int = 256, device: torch.device | str = "cpu",
            cache: FeatureCache | None = None, show_progress: bool = True, desc: str = "features",
            layers: list[int] | None = None) -> Features | dict[int, Features]:
    """Pooled features of every clean image of ``split`` or, with ``pairs`` [M, 2] (subordinate, dominant
    indices) and ``alpha``, of the M mixtures: the encoder's output, or with ``layers`` (block numbers)
    {block: its Features}. Every layer not in ``cache`` comes from one pass; each is cached under its own key
    (the last block's is the encoder output's)."""
    device = torch.device(device)
    inputs: dict[str, Any] = {"inputs": "clean"}
    index = torch.arange(len(split)).view(-1, 1)
    if pairs is not None:
        if alpha is None:
            raise ValueError("mixtures need alpha")
        inputs = {"inputs": "mixture", "pairs": digest(pairs), "alpha": float(alpha)}
        index = pairs
    key = {"version": FEATURE_VERSION, "checkpoint": fingerprint, "split": split.key, **inputs}
    if precision.uses_bf16(device):  # bf16 features are not the fp32 ones (fp32 keys stay as they were)
        key["precision"] = "bf16"
    depth = model.arch.depth
    wanted = [depth] if layers is None else layers
    keys = {k: key if k == depth else {**key, "layer": k} for k in wanted}
    out: dict[int, Features] = {}
    for k in wanted:
        if cache is not None and (hit := cache.get(keys[k])) is not None:
            out[k] = hit
    missing = [k for k in wanted if k not in out]
    if missing:
        out.update(_encode_split(model, split, index, pairs, alpha, batch_size, device, show_progress, desc,
                                 missing))
        for k in missing:
            if cache is not None:
                cache.put(keys[k], out[k])
    return out[depth] if layers is None else dict(sorted(out.items()))


def _encode_split(model: MaskedAutoencoder, split: Split, index: torch.Tensor, pairs: torch.Tensor | None,
                  alpha: float | None, batch_size: int, device: torch.device, show_progress: bool, desc: str,
                  layers: list[int]) -> dict[int, Features]:
    """One pass of the frozen encoder over the inputs ``index`` [M, K] -> {block: Features}; the pass's time is
    counted once, on the first block."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    parts: dict[int, tuple[list, list]] = {k: ([], []) for k in layers}
    norm = Normalize(split.data.mean, split.data.std)
    bar = progress(index.shape[0], desc=desc, enabled=show_progress)
    with torch.inference_mode(), eval_precision(device):
        for u8 in split.batches(index, batch_size):  # [b, K, 3, H, W]
            u8 = u8.to(device, non_blocking=True)
            x = norm(u8[:, 0])
            if pairs is not None:
                x = mix(x, norm(u8[:, 1]), alpha)
            for k, (c, m) in encode_layers(model, x, layers).items():
                parts[k][0].append(c.float())  # on the device until the end: no copy (and sync) per batch
                parts[k][1].append(m.float())
            bar.update(u8.shape[0])
    bar.close()
    model.train(was_training)
    seconds = time.perf_counter() - t0
    return {k: Features(torch.cat(parts[k][0]).cpu(), torch.cat(parts[k][1]).cpu(),
                        seconds=seconds if k == layers[0] else 0.0) for k in layers}


def extract_split(subject, split: Split, cfg, *, which: str, device: torch.device | str,
                  cache: FeatureCache | None, show_progress: bool = True,
                  layers: list[int] | None = None) -> Features | dict[int, Features]:
    """Clean features of the ``which`` ("training" / "evaluation") split of a probe, kNN or semantics run
    (with ``layers``: {block: Features}, see :func:`extract`).

    ``subject``: an :class:`imae.eval.subject.Subject`; ``cfg``: an :class:`imae.config.evaluate.EvalConfig`.
    """
    return extract(subject.model, split, subject.fingerprint, batch_size=cfg.features.batch_size, device=device,
                   cache=cache, show_progress=show_progress, desc=f"features ({which} split)", layers=layers)
