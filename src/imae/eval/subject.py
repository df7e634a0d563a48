"""What is evaluated: a checkpoint (ours or an official MAE release), its model, run and output folder.

``CKPT`` on the command line is a checkpoint file (``.pth`` or ``.safetensors``), a run directory (its newest
complete checkpoint) or a Hugging Face ViTMAE folder.
Our checkpoints carry their training configuration, which supplies the data set, its path and the
image size; an official checkpoint (``{"model": state_dict}``) needs ``--preset`` / ``--set data.*``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imae.engine import checkpoint as ckpt
from imae.errors import CheckpointError
from imae.models.loading import model_from_checkpoint
from imae.models.mae import MaskedAutoencoder

if TYPE_CHECKING:
    from imae.config.evaluate import EvalConfig


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

    @cached_property
    def sha256(self) -> str:
        """Content hash of the checkpoint file (of a Hugging Face folder: of its files, by name): what identifies
        a reference across folders and machines."""
        h = hashlib.sha256()
        files = sorted(f for f in self.path.rglob("*") if f.is_file()) if self.path.is_dir() else [self.path]
        for file in files:
            if self.path.is_dir():
                h.update(str(file.relative_to(self.path)).encode())
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        return h.hexdigest()

    @property
    def teacher(self) -> str | None:
        """The teacher named in an i-MAE run's configuration."""
        return ((self.train_config or {}).get("imae") or {}).get("teacher") if self.kind == "imae" else None

    def training_setting(self, section: str, key: str) -> Any:
        """A value of the run's training configuration (None for checkpoints that carry none)."""
        return ((self.train_config or {}).get(section) or {}).get(key)

    def identity(self, evaluated: Subject) -> dict[str, Any]:
        """What a result records about this checkpoint as the reference of ``evaluated``."""
        teacher = evaluated.teacher
        is_teacher = bool(teacher) and Path(teacher).exists() and _same_file(Path(teacher), self)
        return {"path": str(self.path), "label": self.label, "sha256": self.sha256, "is_self": self is evaluated,
                "is_teacher": is_teacher}

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
    teacher = subject.teacher
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


def shared_reference(subjects: list[Subject], explicit: str | None, num_heads: int | None = None) -> Subject:
    """The one reference of a comparison: ``explicit``, else the teacher of the first i-MAE, else the first."""
    spec = explicit or next((x.teacher for x in subjects if x.teacher), None)
    if spec is None:
        return subjects[0]
    for x in subjects:
        if _same_file(Path(spec), x):
            return x
    return load_subject(spec, num_heads if explicit else None)


def separability_defaults(cfg: EvalConfig, *subjects: Subject) -> None:
    """Fill what ``separability`` leaves to the evaluated run(s): the mask ratio (the first run's training
    ratio; 0.75 for official checkpoints) and the partners' same-class rate (the training p of the first
    i-MAE among ``subjects`` where it is a number, else random), so that compared runs share pairs."""
    s = cfg.separability
    if s.mask_ratio is None:
        ratio = subjects[0].training_setting("train", "mask_ratio")
        s.mask_ratio = float(ratio) if ratio is not None else 0.75
    if s.same_class_p is None:
        s.same_class_p = "random"
        for subject in subjects:
            p = subject.training_setting("imae", "same_class_p") if subject.kind == "imae" else None
            if isinstance(p, (int, float)) and not isinstance(p, bool):
                s.same_class_p = float(p)
                break
