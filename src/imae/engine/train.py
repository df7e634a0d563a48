"""Pre-training loop for MAE and i-MAE: DDP, accumulation, bf16 autocast, checkpoints, logs, resume.

``pretrain(cfg)`` runs one whole job and returns its run directory. It is the same code on one CPU,
one GPU, or N processes launched by torchrun (each rank trains on its slice of every global batch).
Every step is a pure function of (seed, epoch, step, rank) and the weights, so a run stopped at any
point (SIGTERM, SIGKILL, a lost node) and resumed from its last checkpoint ends with the same weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from imae import __version__
from imae.checkpoints import safetensors_io
from imae.config import Config
from imae.data.datasets import load_split
from imae.data.loader import build_train_loader
from imae.engine import checkpoint as ckpt
from imae.engine import distributed as D
from imae.engine.logs import RunLog, info, progress
from imae.engine.objectives import build_objective
from imae.engine.optim import absolute_lr, build_adamw, grad_norm, lr_at, set_lr, step_unless
from imae.engine.run_dir import (
    StartUndo,
    config_changes,
    default_run_dir,
    find_resume,
    lock_run_dir,
    new_run_dir,
    resumed_config,
    write_config,
)
from imae.engine.signals import StopRequest
from imae.errors import ConfigError, TrainingError


@dataclass
class TrainState:
    epoch: int = -1  # last completed epoch (as the official MAE); -1 before the first
    step_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained on
    global_step: int = 0  # optimiser steps taken
    nonfinite_skipped: int = 0
    # stopped mid-epoch: the running sums of the epoch's finished steps (loss terms summed over ranks,
    # per-rank step and image counts, seconds), so the resumed epoch's record equals an uninterrupted one's
    partial: dict[str, Any] | None = None


def pretrain(cfg: Config, resume: str | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Train ``cfg`` (or continue ``resume``: a run directory, checkpoint, or ``auto``). Returns the run dir."""
    env = D.setup(cfg.device)
    try:
        return _pretrain(cfg, env, resume, overrides or {})
    except RuntimeError as e:
        if not D.is_peer_error(e):
            raise
        raise TrainingError(f"rank {env.rank} lost contact with another training process ({D.short(e)}); the last "
                            f"complete checkpoint is intact: restart the job with --resume auto") from None
    finally:
        D.cleanup()


def _pretrain(cfg: Config, env: D.DistEnv, resume: str | None, overrides: dict[str, Any]) -> Path:
    main = env.is_main
    found = find_resume(resume, cfg.output_dir) if resume else None
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
        return _train(cfg, env, run_dir, held, undo)
    except BaseException:
        if undo is not None:  # a failed start leaves nothing behind (a run that trained keeps its logs)
            undo.undo()
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, env: D.DistEnv, run_dir: Path, held: list, undo: StartUndo | None) -> Path:
    main = env.is_main
    found = held.pop()
    resume_ck, changes, original = None, {}, None
    if found is not None:
        _, path, resume_ck = found
        del found
        layout = {"batch_size": cfg.train.batch_size, "accum_iter": cfg.train.accum_iter, "world_size": env.world_size}
        if resume_ck.get("step_in_epoch") and resume_ck.get("layout") not in (None, layout):
            # the rest of the epoch's batch plan would differ: some images would be seen twice, others not at all
            raise ConfigError(f"{run_dir} stopped in the middle of an epoch with {_describe(resume_ck['layout'])}; "
                              f"resume it with the same (now {_describe(layout)})")
        info(f"resuming {run_dir} from {path.name} ({resume_ck.get('epoch', -1) + 1} epoch(s) and "
             f"{resume_ck.get('step_in_epoch', 0)} step(s) done)", main)
        original = resume_ck.get("config") or {}
        changes = config_changes(original, cfg.to_dict())
        for key, (old, new) in changes.items():
            info(f"resume: {key} changed: {old!r} -> {new!r}", main)
        if main:  # log.jsonl may hold records past this checkpoint: they are redone (and logged again) now
            note = RunLog(run_dir, tensorboard=False)
            note.write("event", {"event": "resume", "from": path.name, "global_step": resume_ck.get("global_step", 0),
                                 "changes": changes, "epochs_from": 1})
            note.close()
    D.check_same_config(cfg.to_dict())
    if cfg.train.checkpoint_format == "safetensors":  # fail now, not at the first checkpoint
        safetensors_io.require("train.checkpoint_format=safetensors")
    if main:
        ckpt.remove_partial_writes(run_dir)
        write_config(cfg, run_dir, original=original if changes else None)
    t = cfg.train

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    objective = build_objective(cfg)
    model: nn.Module = objective.model
    if cfg.init_from and resume_ck is None:
        objective.load_init(ckpt.load(cfg.init_from))
    arch = model.arch
    data = load_split(cfg.data.dataset, "train", cfg.data.path, arch.img_size, cfg.data.download,
                      cfg.data.in_memory, cfg.data.max_per_class, cfg.data.cache_dir, cfg.data.skip_corrupt,
                      progress=main)
    if data.skipped:
        info(f"skipped {len(data.skipped)} unreadable image(s) (--skip-corrupt), e.g. {data.skipped[0]}", main)
    if hasattr(objective, "prepare"):
        objective.prepare(data, env.device)  # i-MAE: check labels for pairing
    place_model(model, env.device, t.amp)
    net: nn.Module = model
    if env.distributed:  # DDP first, then compile (PyTorch's order): gradient buckets overlap the backward
        net = DDP(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = absolute_lr(t.blr, t.lr, eff_batch)
    optimizer = build_adamw(model, base_lr, t.weight_decay, t.betas, env.device)
    state = TrainState()
    if resume_ck is not None:
        ckpt.restore(model, optimizer, resume_ck)
        state = TrainState(resume_ck.get("epoch", -1), resume_ck.get("step_in_epoch", 0),
                           resume_ck.get("global_step", 0), resume_ck.get("nonfinite_skipped", 0),
                           resume_ck.get("partial") if resume_ck.get("step_in_epoch", 0) else None)
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
                            "skipped_files": data.skipped})

    if undo is not None:
        undo.keep()
    loop = _Loop(cfg, env, objective, net, optimizer, loader, log, run_dir, base_lr, state)
    loop.load_skipped = len(data.skipped)
    try:
        with StopRequest() as stop:
            loop.stop = stop
            for epoch in range(state.epoch + 1, t.epochs):
                if t.max_steps and state.global_step >= t.max_steps:
                    break  # resumed after its last step
                ended = loop.run_epoch(epoch)
                if loop.max_reached:
                    info(f"reached train.max_steps={t.max_steps} ({state.epoch + 1} epoch(s) and "
                         f"{state.step_in_epoch} step(s)); checkpoint written", main)
                    log.write("event", {"event": "max_steps", "global_step": state.global_step})
                    break
                if not ended or (epoch + 1 < t.epochs and loop.stop_requested()):
                    loop.report_stop()
                    return run_dir  # stopped by a signal; checkpoint written
    finally:
        log.close()
    info(f"done: {run_dir}", main)
    return run_dir


def _describe(layout: dict[str, int]) -> str:
    return (f"train.batch_size={layout['batch_size']}, train.accum_iter={layout['accum_iter']} on "
            f"{layout['world_size']} process(es)")


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


class _Loop:
    """One training run's epoch loop (kept as an object so its state is in one place)."""

    def __init__(self, cfg: Config, env: D.DistEnv, objective, net: nn.Module, optimizer, loader, log: RunLog,
                 run_dir: Path, base_lr: float, state: TrainState) -> None:
        self.cfg, self.env, self.objective, self.net = cfg, env, objective, net
        self.model: nn.Module = objective.model
        self.optimizer, self.loader, self.log, self.run_dir = optimizer, loader, log, run_dir
        self.base_lr, self.state = base_lr, state
        self.stop: StopRequest | None = None
        self.load_skipped = 0
        self.max_reached = False
        # the lr schedule's length (and warm-up) in epochs: a smoke run (train.max_steps) gets it compressed
        t = cfg.train
        self.sched_epochs: float = t.epochs
        self.sched_warmup: float = t.warmup_epochs
        if t.max_steps:
            span = min(float(t.epochs), t.max_steps / math.ceil(len(loader) / t.accum_iter))
            self.sched_epochs, self.sched_warmup = span, t.warmup_epochs * span / t.epochs
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.train.amp and env.device.type == "cuda"
                         else contextlib.nullcontext())

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (from ``state.step_in_epoch``). Returns False when a stop signal ended it."""
        t, st, env = self.cfg.train, self.state, self.env
        steps = len(self.loader)
        start = st.step_in_epoch
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        seen, skipped_files, finite_steps, t0 = 0, 0, 0, time.time()
        data_s, tick = 0.0, time.perf_counter()  # time spent waiting for batches (data on the critical path)
        part, st.partial = (st.partial or {}) if start else {}, None
        if part:  # resumed mid-epoch: continue the sums of the steps done before the stop (rank 0 holds them)
            for k, v in part.get("sums", {}).items():
                sums[k] = torch.tensor(float(v) if env.is_main else 0.0, device=env.device)
            finite_steps, seen = int(part.get("finite_steps", 0)), int(part.get("seen", 0))
            skipped_files, data_s = int(part.get("skipped_files", 0)), float(part.get("data_wait_s", 0.0))
            t0 -= float(part.get("time_s", 0.0))
            if part.get("objective") is not None and hasattr(self.objective, "resume_stats"):
                self.objective.resume_stats(part["objective"], env.is_main)

        def running() -> dict[str, Any]:
            """What a mid-epoch checkpoint keeps of this epoch's sums (one collective, on every rank)."""
            names = sorted(sums)
            total = D.all_reduce_sum(torch.stack([sums[k] for k in names]).to(env.device)) if names else None
            return {"sums": {k: float(v) for k, v in zip(names, total.tolist())} if names else {},
                    "finite_steps": int(finite_steps), "seen": seen, "skipped_files": skipped_files,
                    "data_wait_s": data_s, "time_s": time.time() - t0,
                    **({"objective": self.objective.running_stats()} if hasattr(self.objective, "running_stats")
                       else {})}
        bar = progress(steps, start, f"epoch {epoch + 1}/{t.epochs}", env.is_main)
        group_bad = torch.zeros((), dtype=torch.bool, device=env.device)
        # not yet read: (step, non-finite flags [loss, gradients], loss terms, gradient norm) per micro-step
        pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        names: list[str] = []
        rows: list[tuple[bool, list[float]]] = []
        # the host reads the device once per logging interval (on a CPU, where a read costs nothing, every step)
        read_every_step = env.device.type == "cpu"
        for step, batch in self.loader.batches(epoch, start):
            data_s += time.perf_counter() - tick
            group_start = step - step % t.accum_iter
            group_size = min(t.accum_iter, steps - group_start)
            last_micro = step == group_start + group_size - 1
            if step == group_start:
                set_lr(self.optimizer, lr_at(epoch + step / steps, self.base_lr, t.min_lr, self.sched_warmup,
                                             self.sched_epochs))
            ddp = getattr(self.net, "_orig_mod", self.net)  # under torch.compile, DDP is the compiled module
            sync = contextlib.nullcontext() if last_micro or not isinstance(ddp, DDP) else ddp.no_sync()
            with sync:
                with self.autocast:
                    out = self.objective(self.net, batch, t.mask_ratio)
                loss = out["loss"]
                # a device-side flag, not .item(): the host does not wait for the forward pass; a non-finite
                # group is skipped by the optimiser itself (found_inf, as under GradScaler)
                bad = ~torch.isfinite(loss.detach())
                group_bad = bad if step == group_start else group_bad | bad
                (loss / group_size).backward()
            names = [k for k, v in out.items() if v.ndim == 0]
            terms = torch.stack([out[k].detach().float() for k in names])
            pending.append((step, torch.stack([bad, torch.zeros_like(bad)]), terms, torch.zeros_like(terms[0])))
            for k, v in zip(names, terms.unbind()):
                sums[k] = sums.get(k, 0.0) + torch.where(bad, 0.0, v)
            finite_steps = finite_steps + (~bad).long()
            if read_every_step and not last_micro:  # the last one is read with its gradient check below
                rows = self._read_pending(epoch, pending, names)
            seen += batch.images.shape[0]
            skipped_files += batch.skipped
            bar.update(1)
            if not last_micro:
                tick = time.perf_counter()
                continue
            # a finite loss can still give inf / NaN gradients: check their norm (clipping computes it anyway),
            # on the device; the group's flags join the pending row of its last micro-step
            norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad) if t.clip_grad
                    else grad_norm(self.model.parameters())).detach().float()
            grad_bad = ~torch.isfinite(norm) & ~group_bad
            pending[-1] = (step, torch.stack([bad, grad_bad]), terms, norm)
            if read_every_step:
                rows = self._read_pending(epoch, pending, names)
            found = (group_bad | grad_bad).float()
            step_unless(self.optimizer, D.all_reduce_sum(found) if env.distributed else found)
            self.optimizer.zero_grad(set_to_none=True)
            st.global_step += 1
            st.step_in_epoch = step + 1
            log_step = st.global_step % t.log_every == 0
            save_step = bool(t.save_every_steps) and st.global_step % t.save_every_steps == 0 and step + 1 < steps
            if (log_step or save_step) and not read_every_step:
                rows = self._read_pending(epoch, pending, names)
            if log_step and rows and not rows[-1][0]:
                rec = dict(zip(names, rows[-1][1]))
                rec.update(epoch=epoch + 1, step=st.global_step, lr=self.optimizer.param_groups[0]["lr"])
                self.log.write("step", rec, step=st.global_step, prefix="train")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if t.max_steps and st.global_step >= t.max_steps:
                self.max_reached = True
                if step + 1 < steps:
                    self._read_pending(epoch, pending, names)
                    bar.close()
                    self._save(epoch - 1, step + 1, numbered=False, partial=running())
                    return False
            if step + 1 < steps:
                # across processes the stop check is a collective: once per logging interval, not per step
                if (not env.distributed or log_step or save_step) and self.stop_requested():
                    self._read_pending(epoch, pending, names)
                    bar.close()
                    self._save(epoch - 1, step + 1, numbered=False, partial=running())
                    return False
                if save_step:
                    self._save(epoch - 1, step + 1, numbered=False, partial=running())
            tick = time.perf_counter()
        bar.close()
        self._read_pending(epoch, pending, names)
        finite_steps = int(finite_steps)
        metrics = self._epoch_metrics(sums, finite_steps, seen, time.time() - t0, skipped_files + self.load_skipped)
        metrics["data_wait_s"] = data_s
        metrics["images"] = float(seen * D.world_size())
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.log.write("epoch", {"epoch": epoch + 1, **metrics}, step=epoch + 1, prefix="epoch")  # 1-based
        self.log.flush()
        shown = ("images_per_s", "lr", "time_s", "skipped_files", "data_wait_s", "images")
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in shown)
        info(f"epoch {epoch + 1}/{t.epochs}: {summary}; {metrics['images_per_s']:.0f} img/s"
             + (f"; {metrics['skipped_files']:.0f} unreadable file(s) skipped" if metrics.get("skipped_files") else ""),
             env.is_main)
        numbered = (epoch + 1) % max(t.save_every, 1) == 0 or epoch + 1 == t.epochs
        self._save(epoch, 0, numbered=numbered, metrics=metrics)
        return True

    def stop_requested(self) -> bool:
        """True on every rank once any rank has received SIGTERM / SIGINT."""
        asked = self.stop is not None and self.stop.signal is not None
        if D.world_size() > 1:
            asked = not D.all_true(not asked, self.env.device)
        return asked

    def report_stop(self) -> None:
        st = self.state
        name = self.stop.name if self.stop else "a signal"
        info(f"stopped by {name} after {st.epoch + 1} epoch(s) and {st.step_in_epoch} step(s); checkpoint "
             f"written; continue with: imae pretrain --resume {self.run_dir}", self.env.is_main)
        # "epoch": the epoch in progress (1-based, as in step and epoch records), of which step_in_epoch are done
        self.log.write("event", {"event": "stopped", "signal": name, "epoch": st.epoch + 2,
                                 "step_in_epoch": st.step_in_epoch, "epochs_done": st.epoch + 1})

    def _read_pending(self, epoch: int, pending: list, names: list[str]) -> list[tuple[bool, list[float]]]:
        """Read the (non-finite loss and gradient flags, gradient norm, loss terms) of the steps since the last
        read in one host sync (and across processes one collective), report each non-finite step, and empty
        ``pending``. Returns (skipped, loss terms) per step."""
        if not pending:
            return []
        flags = torch.stack([f for _, f, _, _ in pending]).float()  # [n, 2]: loss, gradients
        if self.env.distributed:  # a step is non-finite when it is on any rank (every rank then skipped it)
            flags = D.all_reduce_sum(flags)
        norms = torch.stack([g for _, _, _, g in pending])
        vals = torch.cat([flags, norms[:, None], torch.stack([v for _, _, v, _ in pending])], dim=1).tolist()
        steps = [s for s, _, _, _ in pending]
        pending.clear()
        rows = []
        for step, row in zip(steps, vals):
            loss_bad, grads_bad, norm, terms = row[0] > 0, row[1] > 0, row[2], dict(zip(names, row[3:]))
            if loss_bad:
                self._nonfinite(epoch, step, terms)
            elif grads_bad:
                self._nonfinite(epoch, step, terms, grad_norm=norm)
            rows.append((loss_bad or grads_bad, row[3:]))
        return rows

    def _nonfinite(self, epoch: int, step: int, out: dict[str, float], grad_norm: float | None = None) -> None:
        """A non-finite loss, or (``grad_norm``) non-finite gradients of a finite loss: skip or stop."""
        st, t = self.state, self.cfg.train
        st.nonfinite_skipped += 1
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.items())
        what = "loss"
        if grad_norm is not None:
            what, terms = "gradient norm", f"grad_norm={grad_norm:.4g}; {terms}"
        self.log.write("event", {"event": "nonfinite", "epoch": epoch + 1, "step": step + 1, "terms": terms})
        if st.nonfinite_skipped <= t.skip_nonfinite:
            info(f"non-finite {what} at epoch {epoch + 1} step {step + 1} ({terms}); update skipped "
                 f"({st.nonfinite_skipped}/{t.skip_nonfinite} allowed)", self.env.is_main)
            return
        raise TrainingError(f"{what} became non-finite at epoch {epoch + 1} step {step + 1} ({terms}); "
                            f"{self._last_good()}; lower the learning rate or set train.clip_grad, or tolerate it "
                            f"with --skip-nonfinite N")

    def _last_good(self) -> str:
        last = ckpt.latest_complete(self.run_dir) if self.env.is_main else None
        return f"last good checkpoint: {last[0]}" if last else "no checkpoint was written yet"

    def _epoch_metrics(self, sums: dict[str, torch.Tensor], steps: int, seen: int, seconds: float,
                       skipped: int) -> dict[str, float]:
        names = sorted(sums)
        metrics: dict[str, float] = {}
        if names:
            vec = torch.stack([sums[k] for k in names]).to(self.env.device)
            vec = D.all_reduce_sum(vec) / (max(steps, 1) * D.world_size())
            metrics = {k: float(v) for k, v in zip(names, vec.tolist())}
        if hasattr(self.objective, "epoch_stats"):
            metrics.update(self.objective.epoch_stats())
        metrics["images_per_s"] = seen * D.world_size() / max(seconds, 1e-9)
        metrics["time_s"] = seconds
        if skipped:
            metrics["skipped_files"] = float(skipped)
        return metrics

    def _save(self, epoch: int, step_in_epoch: int, numbered: bool, metrics: dict | None = None,
              partial: dict | None = None) -> None:
        """Write checkpoint-last.pth (and checkpoint-<epoch>.pth) on rank 0; every rank stops if that fails."""
        self.state.epoch, self.state.step_in_epoch = epoch, step_in_epoch
        error: TrainingError | None = None
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad and self.env.is_main:  # never replace a good checkpoint by a broken one
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            error = TrainingError(f"the weights became non-finite ({bad[0]}{more}) after {self.state.global_step} "
                                  f"steps; no checkpoint written; {self._last_good()}; lower the learning rate or set "
                                  f"train.clip_grad")
        elif self.env.is_main:
            obj = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.state.global_step,
                "nonfinite_skipped": self.state.nonfinite_skipped,
                "config": self.cfg.to_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling
                "rng": {"torch": torch.get_rng_state()},
                "metrics": metrics or {},
                "partial": partial,
                "layout": {"batch_size": self.cfg.train.batch_size, "accum_iter": self.cfg.train.accum_iter,
                           "world_size": self.env.world_size},
                "version": __version__,
                **self.objective.checkpoint_meta(),
            }
            try:
                fmt = self.cfg.train.checkpoint_format
                ckpt.save_checkpoint(obj, self.run_dir / "checkpoint-last.pth", fmt)
                if numbered:
                    ckpt.save_checkpoint(obj, self.run_dir / f"checkpoint-{epoch + 1}.pth", fmt)  # 1-based, as the logs
                    ckpt.prune(self.run_dir, self.cfg.train.keep_last)
            except TrainingError as e:
                error = e
        if not D.all_true(error is None, self.env.device):
            self.log.write("event", {"event": "checkpoint_failed", "error": str(error) if error else "on rank 0"})
            raise error or TrainingError("rank 0 could not write a checkpoint (see its error); use --resume auto")
