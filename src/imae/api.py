"""The Python API a notebook needs: ``imae.load`` (any checkpoint -> its model) and ``imae.create_model``.

Names in the spirit of timm's ``create_model`` and transformers' ``from_pretrained``; see docs/python.md.
"""

from __future__ import annotations

from pathlib import Path

from imae import checkpoints
from imae.models.loading import model_from_checkpoint
from imae.models.mae import MaskedAutoencoder
from imae.models.registry import create_model, list_models

__all__ = ["create_model", "list_models", "load"]


def load(source: str | Path, num_heads: int | None = None) -> MaskedAutoencoder:
    """The model of any checkpoint source, with its weights, in eval mode, on the CPU.

    ``source``: a run directory (its newest intact checkpoint), a ``.pth`` or ``.safetensors`` file, or a
    Hugging Face ViTMAE folder. An i-MAE comes back as :class:`~imae.models.imae.IMAE`, anything else as
    :class:`~imae.models.mae.MaskedAutoencoder`. ``model.preprocess(uint8 images)`` applies the normalisation
    of the data set it was trained on (ImageNet's for checkpoints that do not record one);
    ``model.forward_features(x)`` gives the mask-free tokens [N, 1+L, D], cls first. ``num_heads``: the
    encoder's head count, for an official-layout checkpoint of a non-standard width (recorded otherwise).
    A fine-tuned classifier (``imae finetune``) is refused: load the MAE it was fine-tuned from.
    """
    ck = checkpoints.load(source)
    return model_from_checkpoint(ck, **({"num_heads": num_heads} if num_heads else {})).eval()
