"""State dicts into modules: wrapper prefixes stripped, strict loading with one error naming the keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from imae.errors import CheckpointError


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                    strict: bool = True, ignore: tuple[str, ...] = ()) -> None:
    """``model.load_state_dict`` with one clear error naming missing, unexpected and mis-shaped keys.

    Keys starting with any prefix in ``ignore`` may be missing from ``state_dict``.
    """
    state_dict = strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model): {_few(shapes)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); it was saved for "
                              f"another architecture or image size: pick the matching --preset / model")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, ck: Mapping[str, Any]) -> None:
    """Load a checkpoint being resumed (a :class:`~imae.checkpoints.checkpoint.Checkpoint`) into ``model`` and
    ``optimizer``."""
    load_state_dict(model, ck["model"], source=str(ck.path))
    try:
        optimizer.load_state_dict(ck["optimizer"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"the optimiser state of {ck.path} does not fit ({e}); resume with the "
                              f"configuration it was saved with") from None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    out = {}
    for k, v in state_dict.items():
        for pre in ("module.", "_orig_mod."):
            while k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def _few(items: list[str], n: int = 6) -> str:
    """Up to ``n`` names, whole blocks folded (``blocks.2.*``), then how many more."""
    groups: list[str] = []
    for k in items:
        parts = k.split(".")
        if " " not in k and len(parts) > 2 and parts[1].isdigit():  # shape messages stay whole
            k = ".".join(parts[:2]) + ".*"
        if k not in groups:
            groups.append(k)
    return ", ".join(groups[:n]) + (f" ... (+{len(groups) - n} more)" if len(groups) > n else "")
