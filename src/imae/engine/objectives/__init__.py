"""Training objectives: turn a batch into the model's inputs and return its loss terms.

An objective owns the (unwrapped) model and draws every random input of a step (masking noise, and for
i-MAE the alphas and partners) from the batch's generator, so a step is a pure function of
(seed, epoch, step, rank). One objective a file: ``mae.py`` (vanilla MAE), ``imae.py`` (i-MAE: partners,
alphas, the teacher); ``common.py`` holds what they share.
"""

from __future__ import annotations

from imae.config import Config
from imae.engine.objectives.base import Objective
from imae.engine.objectives.common import model_overrides, note_eps
from imae.engine.objectives.mae import MAEObjective

__all__ = ["MAEObjective", "Objective", "build_objective", "model_overrides", "note_eps"]


def build_objective(cfg: Config, teacher=None):
    """The objective of ``cfg.method`` (``mae`` or ``imae``), holding a freshly built model. ``teacher``: an
    i-MAE's resolved teacher (:func:`imae.engine.teacher.resolve_teacher`), else loaded from ``imae.teacher``."""
    if cfg.method == "mae":
        return MAEObjective(cfg)
    from imae.engine.objectives.imae import IMAEObjective  # noqa: PLC0415  (i-MAE pulls in the teacher)

    return IMAEObjective(cfg, teacher)
