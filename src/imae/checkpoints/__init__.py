"""Checkpoints: reading any source as one typed :class:`Checkpoint`, writing them, and converting them.

``load(source)`` reads a ``.pth`` or ``.safetensors`` file, a run directory or a Hugging Face ViTMAE folder
(:mod:`.sources`); files are written atomically (:mod:`imae.atomic`), the run's numbered/last policy and
checksums are :mod:`.files`, split ``.safetensors`` weights :mod:`.safetensors_io`, strict state-dict loading
:mod:`.state`; conversion to Hugging Face folders and timm ViTs is :mod:`.hf` and :mod:`.timm_export`.

Imports only torch, the standard library and :mod:`imae.errors`: the models build on it
(:func:`imae.models.loading.model_from_checkpoint`), never the other way round.
"""

from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.sources import latest_in, load

__all__ = ["Checkpoint", "latest_in", "load"]
