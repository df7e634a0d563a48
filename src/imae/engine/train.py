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

from imae import __version__, checkpoints
from imae.checkpoints import safetensors_io
from imae.checkpoints.sources import find_resume
from imae.checkpoints.state import restore
from imae.config import Config
from imae.console import info
from imae.data.datasets import load_split
from imae.data.loader import build_train_loader
from imae.engine.loop import Loop, TrainState, check_layout, wrap
from imae.engine.objectives import build_objective
from imae.engine.run_dir import default_run_dir, resumed_config
from imae.engine.session import RunSession
from imae.engine.teacher import resolve_teacher
from imae.models.loading import refuse_classifier
from imae.runtime import distributed as D
from imae.runtime import precision
from imae.runtime.optim import absolute_lr, build_adamw, lr_at


def pretrain(cfg: Config, resume: str | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Train ``cfg`` (or continue ``resume``: a run directory, checkpoint, or ``auto``). Returns the run dir."""
    with D.job(cfg.device, "training") as env:
        return _pretrain(cfg, env, resume, overrides or {})


def _pretrain(cfg: Config, env: D.DistEnv, resume: str | None, overrides: dict[str, Any]) -> Path:
    main = env.is_main
    found = find_resume(resume, cfg.output_dir, main) if resume else None
    if found is not None:
        run_dir = found[0]
        cfg = resumed_config(found[2], run_dir, overrides)
    else:
        run_dir = Path(D.broadcast_object(str(cfg.output_dir or default_run_dir(cfg)) if main else None))
        cfg.output_dir = str(run_dir)
    session = RunSession(env, run_dir, found, settings=cfg.train, section="train",
                         resume_hint=f"imae pretrain --resume {run_dir}")
    del found  # the session hands the checkpoint over once, so that it is freed once restored
    with session:
        return _train(cfg, session, explicit_teacher="imae.teacher" in overrides)


def _train(cfg: Config, session: RunSession, explicit_teacher: bool = False) -> Path:
    env, run_dir = session.env, session.run_dir
    main = env.is_main
    resume_ck = session.take_resume()
    if resume_ck is not None:
        check_layout(resume_ck, cfg.train, env, "train", run_dir)
    # before anything is written: a changed teacher, or the run itself as its teacher, is refused here
    teacher = resolve_teacher(cfg, run_dir, resume_ck, explicit_teacher, main)
    if resume_ck is not None:
        info(f"resuming {run_dir} from {session.resume_path.name} ({resume_ck.get('epoch', -1) + 1} epoch(s) and "
             f"{resume_ck.get('step_in_epoch', 0)} step(s) done) in {precision.name(env.device, cfg.train.amp)}", main)
    D.check_same_config(cfg.to_dict())
    if cfg.train.checkpoint_format == "safetensors":  # fail now, not at the first checkpoint
        safetensors_io.require("train.checkpoint_format=safetensors")
    session.write_config(cfg)
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
        init = checkpoints.load(cfg.init_from)
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
        # log.jsonl may hold records past this checkpoint: they are redone (and logged again) now
        note = session.open_log(tensorboard=False)
        note.write("event", session.resume_event(global_step=resume_ck.get("global_step", 0)))
        if override is not None:
            note.write("event", override)
    objective.prepare(data, env.device)  # i-MAE: check labels for pairing
    place_model(model, env.device, t.amp)
    net = wrap(model, env, t.compile)

    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = absolute_lr(t.blr, t.lr, eff_batch)
    optimizer = build_adamw(model, base_lr, t.weight_decay, t.betas, env.device)
    state = TrainState.from_checkpoint(resume_ck)
    if resume_ck is not None:
        restore(model, optimizer, resume_ck)
        del resume_ck

    loader = build_train_loader(
        data, t.batch_size, arch.img_size, env.device, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
        class_pairs=objective.class_pairs, scale=cfg.data.crop_scale,
        ratio=cfg.data.crop_ratio, hflip=cfg.data.hflip, num_workers=cfg.data.num_workers,
        skip_corrupt=cfg.data.skip_corrupt)
    steps = len(loader)
    resumed = state.epoch >= 0 or state.step_in_epoch > 0
    log = session.open_log(purge_step=state.global_step + 1 if resumed else None)
    if not resumed:
        info(f"training {cfg.method} {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
             f"parameters) on {len(data)} {cfg.data.dataset} images, {steps} steps/epoch x {t.epochs} epochs, "
             f"{env.world_size} process(es) on {env.device.type} in {precision.name(env.device, t.amp)}; "
             f"lr {base_lr:.3g}; writing {run_dir}", main)
        if t.warmup_epochs and t.epochs <= t.warmup_epochs:  # e.g. a one-epoch try of a preset warming up 100
            peak = lr_at(t.epochs, base_lr, t.min_lr, t.warmup_epochs, t.epochs)
            info(f"warning: train.epochs {t.epochs} <= train.warmup_epochs {t.warmup_epochs:g}: the learning rate "
                 f"never leaves its warm-up (it peaks at {peak:.3g} of {base_lr:.3g}); lower train.warmup_epochs "
                 f"for a short run", main)
        log.write("event", {"event": "start", "version": __version__, "epochs_from": 1, "world_size": env.world_size,
                            "precision": precision.name(env.device, t.amp),
                            "images": len(data), "steps_per_epoch": steps, "lr": base_lr,
                            "skipped_files": data.skipped,
                            **({"teacher": objective.teacher_record} if objective.teacher_record else {})})

    session.started()
    loop = Loop(session, objective, net, optimizer, loader, state, base_lr, load_skipped=len(data.skipped))
    if t.monitor_every:
        from imae.engine.monitor import TrainingMonitor

        loop.monitor = TrainingMonitor(cfg, model, env.device, main, log)
    ended = loop.run()
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
