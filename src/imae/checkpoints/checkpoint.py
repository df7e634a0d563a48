"""The one typed object every checkpoint source is read as (:func:`imae.checkpoints.load`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imae.checkpoints.state import strip_prefixes

FORMATS = ("pth", "pth+safetensors", "safetensors", "hf")


@dataclass(frozen=True, eq=False)
class Checkpoint(Mapping[str, Any]):
    """A checkpoint as read: where it came from, its weights, and what it records about them.

    As a read-only mapping it is the file's own entries (``ck["epoch"]``, ``ck["optimizer"]``, the official
    MAE layout's ``ck["model"]`` as stored), so the training loop resumes from it as the file stores it.
    """

    path: Path  # the checkpoint file (for a run directory: its newest intact one; a Hugging Face folder itself)
    model: dict[str, torch.Tensor]  # the weights, official MAE names (DDP's / torch.compile's prefixes stripped)
    format: str  # one of FORMATS; "pth+safetensors": train.checkpoint_format=safetensors's split checkpoint
    arch: dict[str, Any] | None  # MAEArch fields when recorded (ours, Hugging Face), else None (read off shapes)
    config: dict[str, Any] | None  # the resolved training configuration (our runs only)
    kind: str  # "mae" | "imae" | "vit" (a fine-tuned classifier): recorded, else read off the weights' names
    has_decoder: bool  # False for an encoder-only release (its decoder stays untrained when built)
    entries: dict[str, Any] = field(repr=False)  # everything the file holds, "model" included
    skipped: tuple[tuple[Path, str], ...] = ()  # newer checkpoints of the run passed over as damaged: (path, why)

    @classmethod
    def of(cls, entries: Mapping[str, Any], path: str | Path = "checkpoint", format: str = "pth",
           skipped: tuple[tuple[Path, str], ...] = ()) -> Checkpoint:
        """A Checkpoint of a stored dict that holds ``"model"`` (a Checkpoint is returned as it is)."""
        if isinstance(entries, Checkpoint):
            return entries
        entries = dict(entries)
        sd = strip_prefixes(entries["model"]) if isinstance(entries["model"], dict) else entries["model"]
        keys = set(sd) if isinstance(sd, dict) else set()
        arch = entries.get("arch") if isinstance(entries.get("arch"), dict) else None
        config = entries.get("config") if isinstance(entries.get("config"), dict) else None
        return cls(path=Path(path), model=sd, format=format, arch=arch, config=config,
                   kind=_kind(entries.get("kind"), keys), has_decoder="decoder_pos_embed" in keys, entries=entries,
                   skipped=tuple(skipped))

    @property
    def imae_options(self) -> dict[str, Any]:
        """What an i-MAE adds to its architecture (IMAEOptions' fields), {} when none is recorded."""
        stored = self.entries.get("imae_options")
        return stored if isinstance(stored, dict) else {}

    def __getitem__(self, key: str) -> Any:
        return self.entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _kind(stored: Any, keys: set[str]) -> str:
    if stored in ("mae", "imae", "vit"):
        return stored
    if any(k.startswith("decoder_embed_sub.") for k in keys):
        return "imae"
    if any(k.startswith("head.") for k in keys):
        return "vit"
    return "mae"
