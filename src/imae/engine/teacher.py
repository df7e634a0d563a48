"""The frozen teacher of an i-MAE run: which checkpoint it is, and that a resumed run distils from the same one.

A run records its teacher when it starts: ``imae.teacher`` in the configuration becomes an absolute path
(a relative ``--teacher`` does not change meaning with the working directory of a later resume), and every
checkpoint carries ``"teacher": {"path", "file", "sha256"}`` (the path as configured, the checkpoint file it
resolved to, and that file's content hash, as :attr:`imae.eval.subject.Subject.sha256` computes it).

On resume the teacher is hashed again. A different hash (the teacher run trained further, a file replaced)
is refused in one line: restore the teacher, or pass ``--teacher PATH``, an explicit choice that is
printed and recorded in ``log.jsonl`` as a ``teacher_override`` event. A teacher inside the run's own folder
is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imae import checkpoints
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.files import checkpoints_in
from imae.checksum import content_sha256
from imae.config import Config
from imae.console import info
from imae.errors import CheckpointError, ConfigError


@dataclass
class Teacher:
    """The resolved teacher: its checkpoint (tensors not yet in a model), what checkpoints record about it, and
    for a resume given an explicit ``--teacher``, the ``teacher_override`` event to log (None otherwise)."""

    ck: Checkpoint
    record: dict[str, str]
    override: dict[str, Any] | None = None


def absolute(spec: str) -> str:
    """``spec`` as an absolute path (``~`` expanded, ``..`` folded; symbolic links kept as named)."""
    return os.path.abspath(os.path.expanduser(spec))


def resolve_teacher(cfg: Config, run_dir: Path, resume_ck: Checkpoint | None, explicit: bool,
                    main: bool = True) -> Teacher | None:
    """Load the teacher of ``cfg`` (None when the run distils from none) and make ``cfg.imae.teacher`` absolute.

    ``resume_ck``: the checkpoint being resumed (None for a new run); ``explicit``: whether ``--teacher`` (or
    ``--set imae.teacher=``) was given on this command line; ``main``: this process prints.
    """
    i = cfg.imae
    if cfg.method != "imae" or not i.distill or not i.teacher:
        return None
    spec = absolute(str(i.teacher))
    _refuse_self(spec, run_dir)
    i.teacher = spec
    ck = checkpoints.load(spec)
    record = {"path": spec, "file": absolute(str(ck.path)), "sha256": content_sha256(ck.path)}
    teacher = Teacher(ck, record)
    if resume_ck is None:
        return teacher
    stored = resume_ck.get("teacher")
    if not isinstance(stored, dict) or not stored.get("sha256"):
        if not explicit:
            info(f"note: {resume_ck.path} does not record its teacher's content hash (written by an older "
                 f"imae); distilling from {spec} as it is now", main)
        return teacher
    if stored["sha256"] == record["sha256"]:
        return teacher
    was = f"{stored.get('file') or stored.get('path')} had sha256 {stored['sha256'][:12]} when the run started"
    now = f"{record['file']} now has {record['sha256'][:12]}"
    if explicit:
        info(f"teacher changed by --teacher: {was}; distilling from {now} from here on (recorded in log.jsonl)", main)
        teacher.override = {"event": "teacher_override", "from": stored, "to": record}
        return teacher
    hint = _matching(spec, stored["sha256"])
    restore = f"restore it (e.g. --teacher {hint}, which still matches)" if hint else "restore it"
    raise CheckpointError(f"the teacher {spec} is not the one this run distilled from ({was}; {now}): {restore}, or "
                          f"pass --teacher PATH to continue with another teacher (recorded in log.jsonl)")


def _refuse_self(spec: str, run_dir: Path) -> None:
    """A teacher in the run's own folder would distil the student from itself (``--resume R --teacher R``)."""
    teacher, run = Path(spec).resolve(), Path(run_dir).resolve()
    if teacher == run or run in teacher.parents:
        raise ConfigError(f"--teacher {spec} is this run's own folder {run_dir}: an i-MAE distils from a separate, "
                          f"frozen MAE; pass that MAE's run folder or checkpoint")


def _matching(spec: str, sha256: str, limit: int = 8) -> str | None:
    """A checkpoint of teacher run ``spec`` (a folder; its ``limit`` newest) whose content hash is ``sha256``."""
    if not Path(spec).is_dir():
        return None
    for p in checkpoints_in(Path(spec))[:limit]:
        try:
            if content_sha256(p) == sha256:
                return str(p)
        except OSError:
            continue
    return None
