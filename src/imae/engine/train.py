"""Pre-training of MAE and i-MAE: one whole job, from the run directory to the last checkpoint.

``pretrain(cfg)`` sets up the run (new or resumed, locked), the objective (``imae.engine.objectives``), the
data, the optimiser and the logs, then hands the epochs to the training loop (``imae.engine.loop``). It is
the same code on one CPU, one GPU, or N processes launched by torchrun (each rank trains on its slice of
every global batch). Every step is a pure function of (seed, epoch, step, rank) and the weights, so a run
stopped at any point (SIGTERM, SIGKILL, a lost node) and resumed from its last checkpoint ends with the
same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from imae import __version__
from imae.checkpoints import safetensors_io
from imae.checkpoints.files import remove_partial_writes
from imae.checkpoints.state import restore
from imae.config import Config
from imae.console import info
from imae.data.datasets import load_split
from imae.data.loader import build_train_loader
from imae.engine import checkpoint as ckpt
from imae.engine import distributed as D
from imae.engine.logs import RunLog
from imae.engine.loop import Loop, TrainState, check_layout, wrap
from imae.engine.objectives import build_objective
from imae.engine.optim import absolute_lr, build_adamw, lr_at
from imae.engine.run_dir import (
    StartUndo,
    config_changes,
    default_run_dir,
    find_resume,
    hand_edits,
    lock_run_dir,
    new_run_dir,
    resumed_config,
    warn_hand_edits,
    write_config,
)
from imae.engine.teacher import resolve_teacher
from imae.models.loading import refuse_classifier


def pretrain(cfg: Config, resume: str | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Train ``cfg`` (or continue ``resume``: a run directory, checkpoint, or ``auto``). Returns the run dir."""
    with D.job(cfg.device, "training") as env:
        return _pretrain(cfg, env, resume, overrides or {})


def _pretrain(cfg: Config, env: D.DistEnv, resume: str | None, overrides: dict[str, Any]) -> Path:
    main = env.is_main
    found = find_resume(resume, cfg.output_dir, main) if resume else None
    resume_ck, undo = None, None
    if found is not None:
        run_dir, path, resume_ck = found
        cfg = resumed_config(resume_ck, run_dir, overrides)
        undo = StartUndo(run_dir) if main else None
    else:
        if main:
            cfg.output_dir = str(Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg))
            undo = StartUndo(Path(cfg.output_dir))
        run_dir = Path(D.broadcast_object(str(new_run_dir(cfg)) if main else None))
        cfg.output_dir = str(run_dir)
    lock = lock_run_dir(run_dir, env)
    held = [found]  # _train takes it out, so that the resumed checkpoint is freed once restored
    del found, resume_ck
    try:
        return _train(cfg, env, run_dir, held, undo, explicit_teacher="imae.teacher" in overrides)
    except BaseException:
        if undo is not None:  # a failed start leaves nothing behind (a run that trained keeps its logs)
            undo.undo()
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, env: D.DistEnv, run_dir: Path, held: list, undo: StartUndo | None,
           explicit_teacher: bool = False) -> Path:
    main = env.is_main
    found = held.pop()
    resume_ck, changes, original, edits = None, {}, None, {}
    if found is not None:
        _, path, resume_ck = found
        del found
        check_layout(resume_ck, cfg.train, env, "train", run_dir)
    # before anything is written: a changed teacher, or the run itself as its teacher, is refused here
    teacher = resolve_teacher(cfg, run_dir, resume_ck, explicit_teacher, main)
    if resume_ck is not None:
        info(f"resuming {run_dir} from {path.name} ({resume_ck.get('epoch', -1) + 1} epoch(s) and "
             f"{resume_ck.get('step_in_epoch', 0)} step(s) done)", main)
        original = resume_ck.get("config") or {}
        changes = config_changes(original, cfg.to_dict())
        for key, (old, new) in changes.items():
            info(f"resume: {key} changed: {old!r} -> {new!r}", main)
        edits = hand_edits(run_dir, original, cfg.to_dict()) if main else {}
        warn_hand_edits(run_dir, edits)
    D.check_same_config(cfg.to_dict())
    if cfg.train.checkpoint_format == "safetensors":  # fail now, not at the first checkpoint
        safetensors_io.require("train.checkpoint_format=safetensors")
    if main:
        remove_partial_writes(run_dir)
        write_config(cfg, run_dir, original=original if changes else None)
    t = cfg.train

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    override = teacher.override if teacher is not None else None  # logged with the resume event
    objective = build_objective(cfg, teacher)
    del teacher  # its tensors are in the model now
    model: nn.Module = objective.model
    if cfg.init_from and resume_ck is None:
        init = ckpt.load(cfg.init_from)
        refuse_classifier(init, "--init-from")
        objective.load_init(init)
        del init
    arch = model.arch
    data = load_split(cfg.data.dataset, "train", cfg.data.path, arch.img_size, cfg.data.download,
                      cfg.data.in_memory, cfg.data.max_per_class, cfg.data.cache_dir, cfg.data.skip_corrupt,
                      progress=main)
    if data.skipped:
        info(f"skipped {len(data.skipped)} unreadable image(s) (--skip-corrupt), e.g. {data.skipped[0]}", main)
    if resume_ck is not None:
        check_layout(resume_ck, cfg.train, env, "train", run_dir, images=len(data))
        if main:  # log.jsonl may hold records past this checkpoint: they are redone (and logged again) now
            note = RunLog(run_dir, tensorboard=False)
            note.write("event", {"event": "resume", "from": path.name, "global_step": resume_ck.get("global_step", 0),
                                 "changes": changes, "epochs_from": 1,
                                 **({"hand_edits_ignored": sorted(edits)} if edits else {})})
            if override is not None:
                note.write("event", override)
            note.close()
    if hasattr(objective, "prepare"):
        objective.prepare(data, env.device)  # i-MAE: check labels for pairing
    place_model(model, env.device, t.amp)
    net = wrap(model, env, t.compile)

    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = absolute_lr(t.blr, t.lr, eff_batch)
    optimizer = build_adamw(model, base_lr, t.weight_decay, t.betas, env.device)
    state = TrainState.from_checkpoint(resume_ck, env.world_size)
    if resume_ck is not None:
        restore(model, optimizer, resume_ck)
        del resume_ck

    loader = build_train_loader(
        data, t.batch_size, arch.img_size, env.device, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
        class_pairs=getattr(objective, "class_pairs", False), scale=cfg.data.crop_scale,
        ratio=cfg.data.crop_ratio, hflip=cfg.data.hflip, num_workers=cfg.data.num_workers,
        skip_corrupt=cfg.data.skip_corrupt)
    steps = len(loader)
    resumed = state.epoch >= 0 or state.step_in_epoch > 0
    log = RunLog(run_dir, enabled=main, purge_step=state.global_step + 1 if resumed else None)
    if not resumed:
        info(f"training {cfg.method} {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
             f"parameters) on {len(data)} {cfg.data.dataset} images, {steps} steps/epoch x {t.epochs} epochs, "
             f"{env.world_size} process(es) on {env.device.type}; lr {base_lr:.3g}; writing {run_dir}", main)
        if t.warmup_epochs and t.epochs <= t.warmup_epochs:  # e.g. a one-epoch try of a preset warming up 100
            peak = lr_at(t.epochs, base_lr, t.min_lr, t.warmup_epochs, t.epochs)
            info(f"warning: train.epochs {t.epochs} <= train.warmup_epochs {t.warmup_epochs:g}: the learning rate "
                 f"never leaves its warm-up (it peaks at {peak:.3g} of {base_lr:.3g}); lower train.warmup_epochs "
                 f"for a short run", main)
        log.write("event", {"event": "start", "version": __version__, "epochs_from": 1, "world_size": env.world_size,
                            "images": len(data), "steps_per_epoch": steps, "lr": base_lr,
                            "skipped_files": data.skipped,
                            **({"teacher": objective.teacher_record} if getattr(objective, "teacher_record", None)
                               else {})})

    if undo is not None:
        undo.keep()
    loop = Loop(objective, net, optimizer, loader, t, env, log, run_dir, base_lr, state, section="train",
                config=cfg.to_dict(), resume_hint=f"imae pretrain --resume {run_dir}")
    loop.load_skipped = len(data.skipped)
    if t.monitor_every:
        from imae.engine.monitor import TrainingMonitor

        loop.monitor = TrainingMonitor(cfg, model, env.device, main, log)
    try:
        ended = loop.run()
    finally:
        log.close()
    if ended == "stopped":
        return run_dir  # checkpoint written; the stop was reported
    if ended == "max_steps" and loop.max_reached:
        info(f"reached train.max_steps={t.max_steps} ({state.epoch + 1} epoch(s) and {state.step_in_epoch} step(s)); "
             f"checkpoint written", main)
    info(f"done: {run_dir}", main)
    return run_dir


def place_model(model: nn.Module, device: torch.device, amp: bool) -> nn.Module:
    """Move ``model`` to ``device``. An i-MAE's frozen teacher is kept in bf16 on CUDA with ``amp`` (half the
    memory, no weight casts per step under autocast; its targets enter the fp32 distillation loss)."""
    model.to(device)
    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        teacher.to(dtype=teacher_dtype(device, amp))
    return model


def teacher_dtype(device: torch.device, amp: bool) -> torch.dtype:
    """bf16 for the frozen teacher on CUDA under autocast, else fp32."""
    return torch.bfloat16 if device.type == "cuda" and amp else torch.float32
