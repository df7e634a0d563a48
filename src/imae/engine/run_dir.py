"""Run directories: where a run writes, how a resumed run finds its configuration and checkpoint."""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from imae.atomic import write_atomic
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.files import checkpoints_in
from imae.config import Config, assign, from_dict, save_config
from imae.config.tree import load_yaml
from imae.console import info
from imae.errors import CheckpointError, ConfigError


def default_run_dir(cfg: Config) -> Path:
    name = cfg.preset or cfg.method
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, fresh: bool) -> Path:
    """Create ``run_dir``; a ``fresh`` run (not a resumed one) refuses a folder that holds checkpoints."""
    if fresh and checkpoints_in(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints; continue it with --resume {run_dir} "
                          f"(or --resume auto), or choose another --output-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {run_dir} ({e.strerror})") from None
    return run_dir


class StartUndo:
    """Removes what a failed start created in its run folder: the folder itself (and the parents made for it)
    when it did not exist, else only the entries that were not there before; an existing entry is never
    touched. ``keep()`` once the run has started training (its logs are worth keeping from then on)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.top: Path | None = None  # the outermost folder this start will create
        self.before: set[str] | None = None
        if self.run_dir.is_dir():
            self.before = set(os.listdir(self.run_dir))
        elif not self.run_dir.exists():
            top = self.run_dir.absolute()
            while not top.parent.exists():
                top = top.parent
            self.top = top
        config = self.run_dir / "config.yaml"
        self.config = config.read_bytes() if self.before is not None and config.is_file() else None
        self.kept = False

    def keep(self) -> None:
        self.kept = True

    def undo(self) -> None:
        if self.kept:
            return
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
        elif self.before is not None and self.run_dir.is_dir():
            for name in set(os.listdir(self.run_dir)) - self.before:
                p = self.run_dir / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            if self.config is not None:  # a resume that failed to start leaves the configuration it found
                (self.run_dir / "config.yaml").write_bytes(self.config)
        self.kept = True


class RunLock:
    """An exclusive lock on a run folder for the life of the run (``with RunLock(run_dir):``), held by rank 0.

    A second process that would write into the same folder (a second run, or a ``--resume`` while the
    run is alive) gets a ``ConfigError`` naming the holder. ``flock`` locks belong to the open file, so
    the kernel releases them when the holder dies (even by SIGKILL): a lock file left by a dead process
    is simply taken over.
    """

    NAME = ".imae.lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot create the lock file {self.path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another imae process (pid {holder}); wait for it "
                              f"to end, or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: Path, env) -> RunLock | None:
    """Rank 0 of ``env`` (a ``DistEnv``) locks the run folder; every rank stops when another process holds it.
    Returns the lock (None on other ranks) to release when the run ends."""
    from imae.runtime import distributed as D

    lock, error = None, None
    if env.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except ConfigError as e:
            error = e
    if not D.all_true(error is None, env.device):
        raise error or ConfigError(f"rank 0 could not lock {run_dir} (see its error)")
    return lock


def resumed_config(ck: Checkpoint, run_dir: Path, overrides: dict[str, Any]) -> Config:
    """The configuration a checkpoint was trained with, with explicit flags (e.g. more epochs) on top."""
    tree = ck.config
    if tree is None:
        raise CheckpointError(f"{ck.path} holds no training configuration; it cannot be resumed "
                              f"(use --init-from to start a new run from its weights)")
    if ck.kind == "vit" or "finetune" in tree:  # `imae finetune`'s run: its configuration is another one
        source = ck.get("source") or "CKPT"
        raise ConfigError(f"{run_dir} is a fine-tune run (of `imae finetune`), not a pre-training run; resume it "
                          f"with: imae finetune {source} --resume {run_dir}")
    disk = _folder_config(run_dir)
    if disk.get("method") and tree.get("method") and disk["method"] != tree["method"]:
        raise CheckpointError(f"{ck.path} is the checkpoint of an {tree['method']} run, but "
                              f"{Path(run_dir) / 'config.yaml'} describes an {disk['method']} run: it was copied in "
                              f"from another run; resume that run's own folder, or start a new run from its weights "
                              f"with --init-from")
    tree = copy.deepcopy(tree)
    for key, value in overrides.items():
        assign(tree, key, value)
    tree["output_dir"] = str(run_dir)
    return from_dict(Config, tree).validate()


def _folder_config(run_dir: Path) -> dict[str, Any]:
    """The run folder's config.yaml ({} when it is missing or unreadable), read with the bounded loader."""
    try:
        data = load_yaml((Path(run_dir) / "config.yaml").read_text(), str(Path(run_dir) / "config.yaml"))
    except (OSError, UnicodeDecodeError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """``{"train.blr": [old, new], ...}``: the keys a resume changes (keys the old configuration lacks, from an
    older imae, and ``output_dir`` are not changes)."""
    out: dict[str, list[Any]] = {}
    for key, value in new.items():
        if key not in old or (not prefix and key == "output_dir"):
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            out.update(config_changes(old[key], value, f"{prefix}{key}."))
        elif old[key] != value:
            out[f"{prefix}{key}"] = [old[key], value]
    return out


def hand_edits(run_dir: Path, saved: dict[str, Any], used: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [value in config.yaml, value used]}``: what was edited by hand in a resumed run's config.yaml
    (it differs from ``saved``, the configuration of the checkpoint) and is not what the resumed run uses
    (``used``: ``saved`` with the resume's flags on top). Such an edit does not take effect, and the resume
    rewrites config.yaml: the caller says so (:func:`warn_hand_edits`)."""
    try:
        disk = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    if not isinstance(disk, dict):
        return {}
    ignored = config_changes(disk, used)
    return {k: ignored[k] for k in config_changes(saved, disk) if k in ignored}


def warn_hand_edits(run_dir: Path, edits: dict[str, list[Any]]) -> None:
    """One line naming the hand-edited keys of config.yaml that a resume does not use; the edited file is kept
    as ``config.edited.yaml`` (config.yaml is then rewritten with the configuration in use)."""
    if not edits:
        return
    kept = Path(run_dir) / "config.edited.yaml"
    try:
        shutil.copyfile(Path(run_dir) / "config.yaml", kept)
    except OSError:
        kept = None
    shown = "; ".join(f"{k}: {_brief(file)} in the file, {_brief(used)} used"
                      for k, (file, used) in list(edits.items())[:4])
    more = f" and {len(edits) - 4} more" if len(edits) > 4 else ""
    info(f"warning: {run_dir}/config.yaml was edited by hand ({shown}{more}); a resume does not read it: it runs "
         f"with its checkpoint's configuration and the flags given (change a setting with --set KEY=VALUE)"
         + (f"; the edited file is kept as {kept.name}" if kept else ""))


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def write_config(cfg: Config, run_dir: Path, original: dict[str, Any] | None = None) -> None:
    """``config.yaml``. ``original``: the configuration a resume changed (its checkpoint's), kept as
    ``config.orig.yaml`` from the first change on; later changes are in the resume events of log.jsonl."""
    if original is not None and not (run_dir / "config.orig.yaml").exists():
        write_atomic(run_dir / "config.orig.yaml", yaml.safe_dump(original, sort_keys=False))
    save_config(cfg, run_dir / "config.yaml")
