"""End-to-end fine-tuning of the encoder as a timm ViT classifier (MAE's ``main_finetune.py`` recipe).

Layer-wise lr decay, AdamW, per-iteration warmup + half-cycle cosine, mixup/cutmix with label smoothing
(``timm.data.Mixup`` + ``SoftTargetCrossEntropy``), drop path, RandAugment + random erasing
(``timm.data.create_transform``), cls-token pooling. The epochs run in pre-training's loop
(``imae.engine.loop``) with the classification objective (``imae.finetune.objective``), so accumulation,
autocast, DDP under torchrun, ``finetune.compile``, the non-finite policy, stop / resume and the logs are the
same code. Writes a run directory: ``config.yaml``, ``log.jsonl``, ``tb/``, ``checkpoint-last.pth``
(+ ``checkpoint-<epoch>.pth``) and ``finetune.json``.

Every random draw of a step (augmentation, batch order, mixup/cutmix, drop path) is a function of
(seed, epoch, step, rank, image), so SIGTERM / SIGINT (checkpoint at the next step, exit 0) or SIGKILL
(the last checkpoint stays) followed by ``--resume`` ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from imae.checkpoints import safetensors_io
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.sources import find_resume
from imae.checkpoints.state import restore
from imae.config.finetune import FinetuneConfig
from imae.console import info
from imae.engine.loop import Loop, TrainState, check_layout, wrap
from imae.engine.session import RunSession
from imae.errors import CheckpointError, ConfigError, DataError
from imae.eval.results import write_result
from imae.eval.run import Session, open_session
from imae.finetune.loader import PlanLoader, transforms
from imae.finetune.objective import ClassifyObjective
from imae.finetune.vit import layer_decay_groups, vit_from_encoder
from imae.runtime import distributed as D
from imae.runtime import precision
from imae.runtime.optim import absolute_lr, adamw


def finetune(ckpt_spec: str | Path, *, preset: str | None = None, overrides: dict[str, Any] | None = None,
             sets: list[str] | None = None, resume: str | None = None) -> Path:
    """Fine-tune ``ckpt_spec`` (checkpoint or run directory); returns the fine-tune's run directory.

    ``resume``: continue a stopped fine-tune: its run directory, one of its checkpoints, or ``auto`` (this
    command's output folder if it holds a fine-tune checkpoint, else start fresh). The fine-tune's saved
    configuration applies, with the flags given here (``overrides``, ``sets``) on top."""
    s = open_session(ckpt_spec, preset=preset, overrides=overrides, sets=sets, cls=FinetuneConfig, move=False)
    found = find_resume(resume, str(_run_dir(s)), s.show_progress) if resume else None
    if found is not None:
        s = _resumed_session(ckpt_spec, found[0], found[2], overrides, sets)
    with D.job(s.cfg.device, "fine-tuning") as env:
        run_dir = _run_dir(s)
        session = RunSession(env, run_dir, found, settings=s.cfg.finetune, section="finetune",
                             resume_hint=f"imae finetune {s.subject.path} --resume {run_dir}")
        del found  # the session hands the checkpoint over once, so that it is freed once restored
        with session:
            return _finetune(s, session)


def _run_dir(s: Session) -> Path:
    return Path(s.cfg.output_dir) if s.cfg.output_dir else s.subject.default_output_dir / "finetune"


def _resumed_session(ckpt_spec: str | Path, run_dir: Path, ck: Checkpoint, overrides: dict[str, Any] | None,
                     sets: list[str] | None) -> Session:
    """The session of a fine-tune being resumed: its saved configuration, explicit flags on top."""
    if ck.kind != "vit" or ck.config is None or "finetune" not in ck.config:
        raise CheckpointError(f"{ck.path} is not a checkpoint of `imae finetune`; --resume takes a fine-tune's "
                              f"run directory (or auto)")
    base = copy.deepcopy(ck.config)
    base["output_dir"] = str(run_dir)
    flags = {k: v for k, v in (overrides or {}).items() if k != "output_dir"}
    return open_session(ckpt_spec, base=base, overrides=flags, sets=sets, cls=FinetuneConfig, move=False)


def _finetune(s: Session, session: RunSession) -> Path:
    cfg: FinetuneConfig = s.cfg
    env, run_dir = session.env, session.run_dir
    t, main = cfg.finetune, env.is_main
    resume_ck = session.take_resume()
    D.check_same_config(cfg.to_dict())
    if t.checkpoint_format == "safetensors":  # fail now, not at the first checkpoint
        safetensors_io.require("finetune.checkpoint_format=safetensors")
    session.write_config(cfg)
    train, test = s.split("train"), s.split("eval")
    if not (train.has_labels and test.has_labels):
        raise DataError(f"fine-tuning needs class labels; {test.data.name} has none")
    torch.manual_seed(cfg.seed)  # identical head initialisation on every rank
    device = env.device
    vit = vit_from_encoder(s.subject.model, train.num_classes, t.drop_path, t.pool).to(device)

    tf_train, tf_test = transforms(cfg, train.size, train.data.mean, train.data.std, train.data.images is not None)
    loader = PlanLoader(train, tf_train, cfg, env.rank, env.world_size, device.type == "cuda")
    steps = len(loader)
    base_lr = absolute_lr(t.blr, None, t.batch_size * t.accum_iter * env.world_size)
    optimizer = adamw(layer_decay_groups(vit, t.weight_decay, t.layer_decay), base_lr, t.betas, device)
    state = TrainState.from_checkpoint(resume_ck)
    if resume_ck is not None:
        check_layout(resume_ck, t, env, "finetune", run_dir, images=len(train))
        if state.epoch + 1 > t.epochs:
            raise ConfigError(f"{run_dir} has already fine-tuned {state.epoch + 1} epochs; --epochs must be at "
                              f"least that")
        restore(vit, optimizer, resume_ck)
    objective = ClassifyObjective(vit, cfg, train.num_classes, test, tf_test, env, str(s.subject.path),
                                  history=resume_ck.get("history") if resume_ck is not None else None)
    del resume_ck
    net = wrap(vit, env, t.compile)
    resumed = state.epoch >= 0 or state.step_in_epoch > 0
    log = session.open_log(purge_step=state.global_step + 1 if resumed else None)
    if resumed:
        info(f"resuming {run_dir} ({state.epoch + 1} epoch(s) and {state.step_in_epoch} step(s) done)", main)
        log.write("event", session.resume_event(epochs_done=state.epoch + 1, step_in_epoch=state.step_in_epoch))
    info(f"fine-tuning {s.subject.path} ({sum(p.numel() for p in vit.parameters()) / 1e6:.2f}M parameters) on "
         f"{len(train)} {train.data.name} images, {steps} steps/epoch x {t.epochs} epochs, {env.world_size} "
         f"process(es) in {precision.name(env.device, t.amp)}; lr {base_lr:.3g}; writing {run_dir}", main)
    session.started()
    loop = Loop(session, objective, net, optimizer, loader, state, base_lr)
    ended = loop.run()
    history = objective.history
    if ended == "max_steps" and state.step_in_epoch:  # a smoke run ends inside an epoch: evaluate there
        rec = {"epoch": state.epoch + 2, "steps": state.step_in_epoch, "partial": True,
               "loss": _partial_loss(state), "lr": loop.lr(), "time_s": (state.partial or {}).get("time_s", 0.0),
               **objective.evaluate()}
        history = history + [rec]
        info(f"reached finetune.max_steps={t.max_steps}: loss {rec['loss']:.4f}, test top-1 "
             f"{rec['test_top1']:.4f}", main)
    elif ended == "max_steps" and history and "test_top1" not in history[-1]:  # ended at an unscored epoch
        history = history[:-1] + [{**history[-1], **objective.evaluate()}]
    session.log.close()
    if ended == "stopped":
        return run_dir  # checkpoint written; the stop was reported
    if main:
        # the headline is the last epoch's (always scored); a maximum over epochs scored on the test split would
        # select on it, and no validation split is held out of training here, so no "best" is reported
        last = history[-1]
        results = {"top1": last["test_top1"], "top5": last.get("test_top5"), "epoch": last["epoch"],
                   "final_top1": last["test_top1"], "final_top5": last.get("test_top5"),
                   "epochs": t.epochs, "pool": t.pool, "train_images": len(train), "test_images": len(test),
                   "history": history}
        record = {"checkpoint": s.subject.describe(), "data": s.describe_data(test, train), "config": cfg.to_dict(),
                  "results": results, "timing": {"train_s": sum(h.get("time_s", 0.0) for h in history)}}
        write_result(run_dir, "finetune", record)
        info(f"done: {run_dir}", main)
    return run_dir


def _partial_loss(state: TrainState) -> float:
    """The mean loss of the steps of the epoch in progress (their sums are in the mid-epoch checkpoint)."""
    part = state.partial or {}
    return part.get("sums", {}).get("loss", 0.0) / max(int(part.get("finite_steps", 0)) * D.world_size(), 1)
