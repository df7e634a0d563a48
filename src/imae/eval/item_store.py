"""Per-test-pair separability scores kept on disk, so that ``imae compare`` does not measure a run again.

A separability evaluation keeps, for every score, its per-test-pair error sums (and per-pair correctness):
what :mod:`imae.eval.compare` pairs across models. They are stored under ``$IMAE_CACHE_DIR/separability``
(beside the feature cache, switched with it by ``features.cache``), keyed by everything they depend on: the
checkpoint's and the reference's content hashes, the split, the pairs, and every setting of the scheme. A
study that runs ``imae separability`` on each arm and then ``imae compare`` on pairs of arms (with the same
settings) measures each arm once.

An entry carries a SHA-1 of its tensors; a damaged or unreadable one is measured again (one warning line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imae.atomic import save_atomic, write_reason
from imae.checksum import tensor_checksum
from imae.console import info
from imae.eval.eval_split import digest
from imae.eval.token_ridge import PairErrors

STORE_VERSION = 1


def store_key(subject, reference, split, pairs, cfg) -> dict[str, Any]:
    """Everything the scores of ``subject`` depend on (the stored results' intervals too)."""
    scheme = {k: v for k, v in cfg.separability.__dict__.items() if k != "reference"}
    return {"store": STORE_VERSION, "checkpoint": subject.sha256, "heads": subject.model.arch.num_heads,
            "reference": reference.sha256, "reference_heads": reference.model.arch.num_heads, "split": split.key,
            "pairs": digest(torch.stack([pairs.sub, pairs.dom, pairs.part])), "scheme": scheme, "seed": cfg.seed,
            "pool": cfg.features.pool, "classify_l2": cfg.linprobe.l2, "classify_iter": cfg.linprobe.max_iter}


def _name(key: tuple) -> str:
    return "|".join("-" if k is None else str(k) for k in key)


def _key(name: str) -> tuple:
    return tuple(None if k == "-" else k for k in name.split("|"))


class ItemStore:
    """Files ``<sha1 of key>.pt`` in ``folder``: {"key", "results", "timing", "raw", "sha1"}."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder, self.enabled, self._warned = Path(folder), enabled, False

    def _file(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{digest(key)}.pt"

    def get(self, key: dict[str, Any]) -> tuple[dict, dict, dict] | None:
        """(results, timing, raw) stored under ``key``, or None."""
        f = self._file(key)
        if not self.enabled or not f.is_file():
            return None
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
            tensors = _tensors(obj["raw"])
            damage = None if obj["sha1"] == tensor_checksum(*tensors) else "checksum mismatch"
        except Exception as e:  # noqa: BLE001 - a damaged entry is measured again
            obj, damage = None, f"unreadable: {type(e).__name__}"
        if damage is not None:
            info(f"warning: the stored separability scores {f} are damaged ({damage}); measuring again")
            return None
        if obj["key"] != digest(key):
            return None
        raw = {_key(name): (PairErrors(*v[:2], *v[2]) if isinstance(v, list) else v) for name, v in obj["raw"].items()}
        return obj["results"], obj["timing"], raw

    def put(self, key: dict[str, Any], results: dict, timing: dict, raw: dict[tuple, Any]) -> None:
        if not self.enabled:
            return
        flat = {_name(k): ([v.sse, v.sst, [v.penalty, v.val_r2]] if isinstance(v, PairErrors) else v)
                for k, v in raw.items()}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_atomic({"key": digest(key), "results": results, "timing": timing, "raw": flat,
                         "sha1": tensor_checksum(*_tensors(flat))}, self._file(key))
        except OSError as e:  # read-only or full: the next compare measures again
            if not self._warned:
                self._warned = True
                info(f"warning: cannot store separability scores in {self.folder} ({write_reason(e)}); going on "
                     f"without (imae compare will measure again)")


def _tensors(flat: dict[str, Any]) -> list[torch.Tensor]:
    """Every tensor of a stored ``raw`` mapping, in name order (what the checksum covers)."""
    out = []
    for name in sorted(flat):
        v = flat[name]
        out += list(v[:2]) if isinstance(v, list) else [v]
    return out
