"""Any checkpoint source as one :class:`~imae.checkpoints.checkpoint.Checkpoint`: a ``.pth`` or ``.safetensors``
file, a run directory (its newest intact checkpoint) or a Hugging Face ViTMAE folder; and what ``--resume``
continues from (:func:`find_resume`)."""

from __future__ import annotations

from pathlib import Path

from imae.checkpoints import files, safetensors_io
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.files import DamagedCheckpoint, checkpoints_in, latest_complete, skipped_note
from imae.checkpoints.hf import load_folder
from imae.console import info
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


def find_resume(resume: str, output_dir: str | None,
                main: bool = True) -> tuple[Path, Path, Checkpoint] | None:
    """(run_dir, checkpoint path, checkpoint) to continue from, or None for ``auto`` with nothing to resume.

    ``resume``: a run directory, a checkpoint file, or ``auto`` (the newest complete checkpoint of
    ``output_dir``, if any). A run directory (and ``auto``) falls back past damaged checkpoints (weights or
    optimiser state not matching their checksum, unreadable files) to the newest intact one, and says so
    (``main``: this process prints); a damaged checkpoint file named explicitly is refused.
    """
    if resume == "auto":
        if not output_dir or not Path(output_dir).is_dir():
            return None
        found = latest_complete(Path(output_dir), RESUME_PARTS)
        if found is None and checkpoints_in(Path(output_dir)):
            raise CheckpointError(f"--resume auto: {output_dir} holds checkpoints but none can be read (damaged or "
                                  f"partial); move them aside to start again there, or choose another --output-dir")
        if found is not None:
            _note_skipped(found[1], main)
        return None if found is None else (Path(output_dir), found[0], found[1])
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such run directory or checkpoint")
    if path.is_dir():
        found = latest_complete(path, RESUME_PARTS)
        if found is None:
            raise CheckpointError(f"--resume {path}: the folder holds no readable checkpoint")
        _note_skipped(found[1], main)
        return path, found[0], found[1]
    try:
        return path.parent, path, load(path, RESUME_PARTS)
    except DamagedCheckpoint as e:
        raise DamagedCheckpoint(f"{e}; --resume {path.parent} resumes from the newest intact one") from None


RESUME_PARTS = ("model", "optimizer")  # what a resumed run reads, so what its checksum check covers


def _note_skipped(ck: Checkpoint, main: bool) -> None:
    note = skipped_note(ck, "resuming from")
    if note:
        info(note, main)
