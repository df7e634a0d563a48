"""One training run's folder and bookkeeping, the same for pre-training and fine-tuning.

A ``RunSession`` is the run folder (created, or refused when a fresh run finds checkpoints there), its
lock (rank 0, for the life of the run), the undo of a failed start (what the start created is removed; an
existing entry is never touched), the resolved configuration (``config.yaml``, and ``config.orig.yaml``
from the first resume that changes it), the log (``log.jsonl``, ``tb/``) and the checkpoint being resumed::

    with RunSession(env, run_dir, found, settings=cfg.train, resume_hint=...) as session:
        ck = session.take_resume()      # the resumed checkpoint (None for a new run), handed over once
        session.write_config(cfg)       # says what a resume changes, keeps the original, writes config.yaml
        log = session.open_log(purge_step)
        log.write("event", session.resume_event(global_step=...))
        session.started()               # from here on a failure keeps the folder: it holds the run's logs
        Loop(session, ...).run()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.files import remove_partial_writes
from imae.config.loop import LoopConfig
from imae.console import info
from imae.engine.logs import RunLog
from imae.engine.run_dir import (
    RunLock,
    StartUndo,
    config_changes,
    hand_edits,
    lock_run_dir,
    prepare_run_dir,
    warn_hand_edits,
    write_config,
)
from imae.runtime import distributed as D


class RunSession:
    """The run folder of one pre-training or fine-tuning job (see the module's notes).

    ``found``: what :func:`~imae.checkpoints.sources.find_resume` returned, (run_dir, checkpoint path, checkpoint),
    or None for a new run; ``settings``: the loop's section of the configuration (``cfg.train`` or
    ``cfg.finetune``; its ``section`` names it in messages); ``resume_hint``: the command that continues it.
    """

    def __init__(self, env: D.DistEnv, run_dir: Path, found: tuple[Path, Path, Checkpoint] | None, *,
                 settings: LoopConfig, section: str, resume_hint: str) -> None:
        self.env, self.run_dir, self.settings = env, Path(run_dir), settings
        self.section, self.resume_hint = section, resume_hint
        self.resume_path: Path | None = found[1] if found is not None else None
        self._resume: Checkpoint | None = found[2] if found is not None else None
        self.saved_config: dict[str, Any] | None = self._resume.config if self._resume is not None else None
        self.config: dict[str, Any] = {}  # the resolved configuration, saved in every checkpoint
        self.changes: dict[str, list[Any]] = {}  # what this resume changes: {"train.blr": [old, new]}
        self.edits: dict[str, list[Any]] = {}  # hand edits of config.yaml that the resume does not use
        self.undo: StartUndo | None = None
        self.lock: RunLock | None = None
        self.log: RunLog | None = None

    @property
    def resumed(self) -> bool:
        return self.resume_path is not None

    def __enter__(self) -> RunSession:
        if self.env.is_main:
            self.undo = StartUndo(self.run_dir)  # before the folder is made: it knows what was there
            prepare_run_dir(self.run_dir, fresh=not self.resumed)
        self.lock = lock_run_dir(self.run_dir, self.env)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.log is not None:
            self.log.close()
        if exc_type is not None and self.undo is not None:  # a failed start leaves nothing behind
            self.undo.undo()
        if self.lock is not None:
            self.lock.release()

    def take_resume(self) -> Checkpoint | None:
        """The checkpoint being resumed, handed over once: the session keeps no reference, so its tensors are
        freed once the caller has restored them."""
        ck, self._resume = self._resume, None
        return ck

    def write_config(self, cfg) -> None:
        """Say what a resume changes (``resume: key changed``) and what of a hand-edited config.yaml it does not
        use, then write ``config.yaml`` (rank 0), keeping the checkpoint's as ``config.orig.yaml`` from the first
        change on. Half-written checkpoint files of a killed process are removed first."""
        main = self.env.is_main
        self.config = cfg.to_dict()
        if self.saved_config is not None:
            self.changes = config_changes(self.saved_config, self.config)
            for key, (old, new) in self.changes.items():
                info(f"resume: {key} changed: {old!r} -> {new!r}", main)
            self.edits = hand_edits(self.run_dir, self.saved_config, self.config) if main else {}
            warn_hand_edits(self.run_dir, self.edits)
        if main:
            remove_partial_writes(self.run_dir)  # they never replace a checkpoint
            write_config(cfg, self.run_dir, original=self.saved_config if self.changes else None)

    def resume_event(self, **fields: Any) -> dict[str, Any]:
        """The ``resume`` event of log.jsonl: the checkpoint resumed from, the configuration changes (and hand
        edits ignored), then ``fields``. Records after it redo the steps past the checkpoint."""
        return {"event": "resume", "from": self.resume_path.name if self.resume_path else None,
                "changes": self.changes, "epochs_from": 1, **fields,
                **({"hand_edits_ignored": sorted(self.edits)} if self.edits else {})}

    def open_log(self, purge_step: int | None = None, tensorboard: bool = True) -> RunLog:
        """The run's log (rank 0 writes); closed when the session ends."""
        if self.log is not None:
            self.log.close()
        self.log = RunLog(self.run_dir, enabled=self.env.is_main, tensorboard=tensorboard, purge_step=purge_step)
        return self.log

    def started(self) -> None:
        """Training begins: from here on a failure keeps the folder (its logs and checkpoints are the run's)."""
        if self.undo is not None:
            self.undo.keep()
