"""What is evaluated: a checkpoint (ours or an official MAE release), its model, run and output folder.

``CKPT`` on the command line is a checkpoint file (``.pth`` or ``.safetensors``), a run directory (its newest
complete checkpoint) or a Hugging Face ViTMAE folder.
Our checkpoints carry their training configuration, which supplies the data set, its path and the
image size; an official checkpoint (``{"model": state_dict}``) needs ``--preset`` / ``--set data.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imae import checkpoints
from imae.checksum import content_sha256
from imae.errors import CheckpointError, ConfigError
from imae.eval.separability_result import ROLE_NOTES
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
    fingerprint: str  # what cached features of this checkpoint are keyed by: its content hash and head count
    label: str  # a short name for tables and figures
    source: Path  # what was asked for: the checkpoint file or run directory
    epoch: int | None = None
    has_decoder: bool = True  # False: an encoder-only release (its model's decoder is untrained)

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
        a reference across folders and machines, and keys the feature cache (hashed once per subject)."""
        return content_sha256(self.path)

    @property
    def teacher(self) -> str | None:
        """The teacher named in an i-MAE run's configuration."""
        return ((self.train_config or {}).get("imae") or {}).get("teacher") if self.kind == "imae" else None

    def training_setting(self, section: str, key: str | None) -> Any:
        """A value of the run's training configuration (``key`` None: a top-level value such as ``init_from``;
        None for checkpoints that carry none)."""
        value = (self.train_config or {}).get(section)
        return value if key is None else (value or {}).get(key)

    def identity(self, evaluated: Subject) -> dict[str, Any]:
        """What a result records about this checkpoint as the reference of ``evaluated``: its ``role`` ("referee":
        none of the below; "self"; "teacher": the one ``evaluated`` distils towards; "start": the checkpoint it
        was initialised from) and, for any role but referee, the ``note`` tables print beside the row."""
        is_self = self is evaluated or _same_file(self.path, evaluated)
        is_teacher = bool(evaluated.teacher) and _names(Path(evaluated.teacher), self)
        start = evaluated.training_setting("init_from", None) if evaluated.train_config else None
        is_start = bool(start) and _names(Path(start), self)
        role = "self" if is_self else "teacher" if is_teacher else "start" if is_start else "referee"
        return {"path": str(self.path), "label": self.label, "sha256": self.sha256, "role": role,
                "is_self": is_self, "is_teacher": is_teacher, "note": ROLE_NOTES[role]}

    def describe(self) -> dict[str, Any]:
        """What a result file records about the checkpoint."""
        return {"path": str(self.path), "label": self.label, "kind": self.kind, "epoch": self.epoch,
                "official_layout": self.train_config is None, "arch": self.model.arch.to_dict(),
                "heads_from": self.model.heads_from}


def load_subject(spec: str | Path, num_heads: int | None = None) -> Subject:
    """Load ``spec`` (a checkpoint file or run directory); one-line ``CheckpointError`` when it cannot be."""
    spec = Path(spec)
    ck = checkpoints.load(spec)
    path = ck.path
    over = {"num_heads": num_heads} if num_heads else {}
    model = model_from_checkpoint(ck, **over).eval()
    model.requires_grad_(False)
    config = ck.config
    if ck.format == "hf":  # a Hugging Face folder is not a run: results go beside it (default_output_dir)
        run_dir = None
    else:
        run_dir = spec if spec.is_dir() else (path.parent if config is not None else None)
    label = run_dir.name if run_dir is not None else path.stem
    epoch = ck.get("epoch")
    subject = Subject(path, run_dir, model, config, "", label, spec, int(epoch) + 1 if isinstance(epoch, int) else None,
                      ck.has_decoder)
    # the content, not path/mtime/size: a different checkpoint copied over with its mtime kept (cp -p, rsync -a,
    # tar) must not reuse another's features; the split checkpoint's .pth names its weights by a per-save token
    subject.fingerprint = f"sha256={subject.sha256}|heads={model.arch.num_heads}"
    return subject


REFEREE_HOW = ("an MAE none of the evaluated models was trained towards, e.g. one trained like the teacher with "
               "another seed (imae pretrain --preset <the teacher's preset> --seed 1)")


def reference_spec(subject: Subject, explicit: str | None) -> str | None:
    """The reference encoder of one evaluated model: ``explicit``, else the model itself (an MAE). An i-MAE is
    never scored against its teacher by default: it is trained towards it, so closeness would count as
    separability; it needs an explicit ``--reference`` (a referee, or the teacher, then labelled so)."""
    if explicit:
        return explicit
    if subject.teacher:
        raise ConfigError(f"{subject.label} is an i-MAE: score it against a referee with --reference CKPT, "
                          f"{REFEREE_HOW}; --reference {subject.teacher} scores it against its own teacher (labelled)")
    return None


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
    if spec is None or subject.path is None or not spec.exists():
        return False
    return spec.resolve() in (subject.source.resolve(), subject.path.resolve())


def _names(spec: Path, subject: Subject) -> bool:
    """Whether ``spec`` (a teacher or start as a run records it) names ``subject``: its file, or its run folder."""
    return _same_file(spec, subject) or (spec.is_dir() and subject.path.resolve().parent == spec.resolve())


def shared_reference(subjects: list[Subject], explicit: str | None, num_heads: int | None = None) -> Subject:
    """The one reference of a comparison: ``explicit`` (one of the subjects if it names one). There is no default:
    the would-be defaults (a compared i-MAE's teacher, or the first model) are each what a compared model
    resembles by construction, so a comparison against them is refused in one line."""
    if not explicit:
        teacher = next((x for x in subjects if x.teacher), None)
        would = (f"the teacher {teacher.teacher} that {teacher.label} distils towards" if teacher
                 else f"{subjects[0].label} itself")
        raise ConfigError(f"compare needs a referee: --reference CKPT, {REFEREE_HOW} (--reference may also name "
                          f"the teacher; the output then says so); the default would be {would}")
    for x in subjects:
        if _same_file(Path(explicit), x):
            return x
    return load_subject(explicit, num_heads)


def separability_defaults(cfg: EvalConfig, *subjects: Subject) -> None:
    """Fill the mask ratio that ``separability`` leaves to the evaluated run(s): the first run's training ratio
    (0.75 for official checkpoints), so that compared runs share masks. A ratio that leaves no patch of a
    subject's image visible is refused in one line (0 is allowed: the encoder then sees every patch)."""
    from imae.config.tree import check_mask_ratio

    s = cfg.separability
    source = ""
    if s.mask_ratio is None:
        ratio = subjects[0].training_setting("train", "mask_ratio")
        s.mask_ratio = float(ratio) if ratio is not None else 0.75
        source = f"unset, so the training ratio of {subjects[0].label}"
    for subject in subjects:
        arch = subject.model.arch
        check_mask_ratio("separability.mask_ratio", s.mask_ratio, arch.num_patches, arch.img_size, arch.patch_size,
                         unmasked=True, source=source)
