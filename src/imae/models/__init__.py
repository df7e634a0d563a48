"""Models: the vanilla MAE (checkpoint-compatible with the official release) and i-MAE."""

from imae.models.imae import IMAE, IMAEOptions
from imae.models.mae import MAEArch, MaskedAutoencoder
from imae.models.registry import create_model, list_models

__all__ = ["IMAE", "IMAEOptions", "MAEArch", "MaskedAutoencoder", "create_model", "list_models"]
