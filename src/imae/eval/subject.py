"""What is evaluated: a checkpoint (ours or an official MAE release), its model, run and output folder.

``CKPT`` on the command line is a checkpoint file (``.pth`` or ``.safetensors``), a run directory (its newest
complete checkpoint) or a Hugging Face ViTMAE folder.
Our checkpoints carry their training configuration, which supplies the data set, its path and the
image size; an official checkpoint (``{"model": state_dict}``) needs ``--preset`` / ``--set data.*``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imae.engine import checkpoint as ckpt
from imae.errors import CheckpointError
from imae.models.loading import model_from_checkpoint
from imae.models.mae import MaskedAutoencoder


@dataclass
class Subject:
    """One checkpoint under evaluation, its model in eval mode (on the CPU until moved)."""

    path: Path  # the checkpoint file
    run_dir: Path | None  # the run directory when the checkpoint is ours
    model: MaskedAutoencoder  # MaskedAutoencoder or IMAE
    train_config: dict[str, Any] | None  # the resolved pre-training configuration (ours only)
    fingerprint: str  # what cached features of this checkpoint are keyed by
    label: str  # a short name for tables and figures
    source: Path  # what was asked for: the checkpoint file or run directory
    epoch: int | None = None

    @property
    def kind(self) -> str:
        return getattr(self.model, "kind", "mae")

    @property
    def default_output_dir(self) -> Path:
        """``<run dir>/eval``; for a checkpoint file that is not ours, ``<folder>/<stem>-eval``; for a Hugging
        Face hub cache snapshot (never written into), ``runs/<org>--<name>-eval``."""
        if self.run_dir is not None:
            return self.run_dir / "eval"
        if self.path.is_dir() and self.path.parent.name == "snapshots":
            return Path("runs") / f"{self.path.parent.parent.name.removeprefix('models--')}-eval"
        return self.path.parent / f"{self.path.stem}-eval"

    def describe(self) -> dict[str, Any]:
        """What a result file records about the checkpoint."""
        return {"path": str(self.path), "label": self.label, "kind": self.kind, "epoch": self.epoch,
                "official_layout": self.train_config is None, "arch": self.model.arch.to_dict()}


def load_subject(spec: str | Path, num_heads: int | None = None) -> Subject:
    """Load ``spec`` (a checkpoint file or run directory); one-line ``CheckpointError`` when it cannot be."""
    spec = Path(spec)
    ck = ckpt.load(spec)
    path = Path(ck["_path"])
    over = {"num_heads": num_heads} if num_heads else {}
    model = model_from_checkpoint(ck, **over).eval()
    model.requires_grad_(False)
    config = ck.get("config") if isinstance(ck.get("config"), dict) else None
    if ck.get("_format") == "hf":  # a Hugging Face folder is not a run: results go beside it (default_output_dir)
        run_dir = None
    else:
        run_dir = spec if spec.is_dir() else (path.parent if config is not None else None)
    files = [Path(f) for f in ck.get("_weights", [])] or [path]  # a Hugging Face folder: its weight files
    stats = [(os.path.realpath(f), f.stat()) for f in files]
    fingerprint = "|".join(f"{real}|{st.st_mtime_ns}|{st.st_size}" for real, st in stats)
    fingerprint += f"|heads={model.arch.num_heads}"
    label = run_dir.name if run_dir is not None else path.stem
    epoch = ck.get("epoch")
    return Subject(path, run_dir, model, config, fingerprint, label, spec,
                   int(epoch) + 1 if isinstance(epoch, int) else None)


def reference_spec(subject: Subject, explicit: str | None) -> str | None:
    """The reference encoder of the feature targets: ``explicit``, else an i-MAE run's teacher, else None
    (the subject itself). The teacher path is read from the run's configuration."""
    if explicit:
        return explicit
    if subject.kind != "imae" or subject.train_config is None:
        return None
    teacher = (subject.train_config.get("imae") or {}).get("teacher")
    if not teacher:
        return None
    if not Path(teacher).exists():
        raise CheckpointError(f"the reference encoder defaults to the run's teacher {teacher}, which does not "
                              f"exist (any more, or relative to another folder); pass --reference CKPT")
    return teacher


def load_reference(subject: Subject, explicit: str | None, num_heads: int | None = None) -> Subject:
    spec = reference_spec(subject, explicit)
    if spec is None or _same_file(Path(spec), subject):
        return subject
    ref = load_subject(spec, num_heads if explicit else None)
    if ref.model.arch.img_size != subject.model.arch.img_size:
        raise CheckpointError(f"the reference encoder {ref.path} takes {ref.model.arch.img_size}px images, the "
                              f"evaluated model {subject.model.arch.img_size}px; pick a reference of the same "
                              f"image size")
    return ref


def _same_file(spec: Path, subject: Subject) -> bool:
    """Whether ``spec`` names what the subject was loaded from, or the subject's checkpoint file."""
    if not spec.exists():
        return False
    return spec.resolve() in (subject.source.resolve(), subject.path.resolve())
