"""Any checkpoint source as one :class:`~imae.checkpoints.checkpoint.Checkpoint`: a ``.pth`` or ``.safetensors``
file, a run directory (its newest intact checkpoint) or a Hugging Face ViTMAE folder."""

from __future__ import annotations

from pathlib import Path

from imae.checkpoints import files, safetensors_io
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.hf import load_folder
from imae.errors import CheckpointError


def load(source: str | Path, verify_parts: tuple[str, ...] = ("model",)) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``: tensors, containers and allow-listed types only.

    A bare state dict is read as ``{"model": state_dict}``. The stored checksum of ``verify_parts`` is
    checked: a damaged file is a one-line CheckpointError, and so is a run directory whose newest checkpoint
    is damaged (it names the newest intact one; only ``--resume`` falls back to it by itself).
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pth or .safetensors file, a run "
                              f"directory or a Hugging Face model folder")
    if path.is_dir() and files.hf_folder(path):
        return load_folder(path)
    if path.is_dir():
        found = files.latest_complete(path, verify_parts)
        if found is None:
            raise CheckpointError(f"{path} holds no readable checkpoint-*.pth; pass a checkpoint file or a "
                                  f"run directory of `imae pretrain`")
        ck = found[1]
        if ck.skipped:
            newest, why = ck.skipped[0]
            raise CheckpointError(f"{newest} is damaged ({why}); the newest intact checkpoint of {path} is "
                                  f"{found[0]}: pass it explicitly to use it")
        return ck
    if path.suffix == ".safetensors":
        return safetensors_io.load_checkpoint(path)
    return files.read_pth(path, verify_parts)


def latest_in(run_dir: Path) -> Path:
    """The checkpoint file of a run directory to evaluate or resume: the newest complete one."""
    return load(run_dir).path
