"""Any checkpoint source as one dict: a ``.pth`` or ``.safetensors`` file, a run directory, a Hugging Face
ViTMAE folder (see :mod:`imae.models.hf`).

The files themselves (atomic writes, safe reading, the run's numbered/last policy, split ``.safetensors``
weights, strict state-dict loading) are :mod:`imae.checkpoints`, below the models; this module only
adds the sources that need the model layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imae.checkpoints import files, safetensors_io
from imae.errors import CheckpointError
from imae.models.hf import load_folder


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors, containers and allow-listed types only.

    A bare state dict is wrapped as ``{"model": state_dict}``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pth or .safetensors file, a run "
                              f"directory or a Hugging Face model folder")
    if path.is_dir() and files.hf_folder(path):
        return load_folder(path)
    if path.is_dir():
        found = files.latest_complete(path)
        if found is None:
            raise CheckpointError(f"{path} holds no readable checkpoint-*.pth; pass a checkpoint file or a "
                                  f"run directory of `imae pretrain`")
        return found[1]
    if path.suffix == ".safetensors":
        return safetensors_io.load_checkpoint(path)
    return files.read_pth(path)


def latest_in(run_dir: Path) -> Path:
    """The checkpoint file of a run directory to evaluate or resume: the newest complete one."""
    return Path(load(run_dir)["_path"])
