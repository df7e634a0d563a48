"""i-MAE: interactive Masked Autoencoders (reference implementation).

The Python API (docs/python.md)::

    import imae
    model = imae.load("runs/c10-imae")           # any checkpoint source -> model in eval mode, on the CPU
    tokens = model.forward_features(model.preprocess(images_uint8))
    mae = imae.create_model("mae_vit_tiny_patch4")

Subpackages follow the data flow: ``runtime`` (devices, processes, precision, optimiser) and ``data``
(data sets, caching, augmentation, pairing, mixing) -> ``checkpoints`` (reading any source, writing,
converting) -> ``models`` (MAE, i-MAE) -> ``engine`` (training loop, run session, logs) -> ``eval``
(separability, semantics, linear probe, kNN, fine-tune) -> ``viz`` (figures, report) -> ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load"]


def __getattr__(name: str) -> Any:
    """The API's names, imported when first used: ``import imae`` alone (the command line) stays light."""
    if name in __all__:
        return getattr(importlib.import_module("imae.api"), name)
    raise AttributeError(f"module 'imae' has no attribute {name!r}")
