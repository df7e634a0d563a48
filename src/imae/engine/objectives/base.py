"""What the training loop (``imae.engine.loop``) trains: an objective, with no-op hooks to override.

The loop calls every hook; an objective overrides the ones it needs (``imae.engine.objectives.mae``,
``.imae``, ``imae.finetune.objective``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class Objective:
    """A loss over batches of one model.

    ``model`` is the unwrapped module (saved, clipped); ``net`` in ``__call__`` the module a step calls
    (DDP- / torch.compile-wrapped). ``class_pairs``: the loader must put a same-class partner in each batch;
    ``teacher_record``: what the checkpoints and the start event record about a teacher (None: none).
    """

    kind = "mae"
    model: nn.Module
    class_pairs = False
    teacher_record: dict[str, str] | None = None

    def __call__(self, net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """The loss terms of ``batch`` (scalars); ``"loss"`` is minimised."""
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        """What its checkpoints carry besides the loop's entries (kind, architecture, ...)."""
        raise NotImplementedError

    def prepare(self, data: Any, device: torch.device) -> None:
        """Before training: check the data set fits (e.g. an i-MAE's class-label pairing)."""

    def prepare_batch(self, batch: Any, epoch: int, step: int, rank: int) -> Any:
        """A batch as the step uses it (e.g. moved and mixed); the loader's batch by default."""
        return batch

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Add to an epoch's record (e.g. an evaluation on the test split)."""

    def epoch_stats(self) -> dict[str, float]:
        """Statistics of the epoch beside the loss terms (all ranks), reset for the next one."""
        return {}

    def running_stats(self) -> list[float] | None:
        """The statistics since the last ``epoch_stats``, kept in a mid-epoch checkpoint (None: none)."""
        return None

    def resume_stats(self, values: list[float], main: bool) -> None:
        """Continue from ``running_stats`` of a stopped epoch."""
