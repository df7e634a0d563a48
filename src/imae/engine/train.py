"""Pre-training loop for MAE and i-MAE: DDP, accumulation, bf16 autocast, checkpoints, logs, resume.

``pretrain(cfg)`` runs one whole job and returns its run directory. It is the same code on one CPU,
one GPU, or N processes launched by torchrun (each rank trains on its slice of every global batch).
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from imae import __version__
from imae.config import Config
from imae.data.datasets import load_split
from imae.data.loader import build_train_loader
from imae.engine import checkpoint as ckpt
from imae.engine import distributed as D
from imae.engine.logs import RunLog, info, progress
from imae.engine.objectives import build_objective
from imae.engine.optim import absolute_lr, build_adamw, lr_at, set_lr
from imae.engine.run_dir import find_resume, new_run_dir, resumed_config, write_config
from imae.errors import TrainingError


@dataclass
class TrainState:
    epoch: int = -1  # last completed epoch (as the official MAE); -1 before the first
    step_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained on
    global_step: int = 0  # optimiser steps taken
    nonfinite_skipped: int = 0


class _StopRequest:
    """SIGTERM / SIGINT handler: ask the loop to checkpoint and exit at the next optimiser step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def pretrain(cfg: Config, resume: str | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """Train ``cfg`` (or continue ``resume``: a run directory, checkpoint, or ``auto``). Returns the run dir."""
    env = D.setup(cfg.device)
    try:
        return _pretrain(cfg, env, resume, overrides or {})
    finally:
        D.cleanup()


def _pretrain(cfg: Config, env: D.DistEnv, resume: str | None, overrides: dict[str, Any]) -> Path:
    main = env.is_main
    found = find_resume(resume, cfg.output_dir) if resume else None
    resume_ck = None
    if found is not None:
        run_dir, path, resume_ck = found
        cfg = resumed_config(resume_ck, run_dir, overrides)
        info(f"resuming {run_dir} from {path.name} ({resume_ck.get('epoch', -1) + 1} epoch(s) and "
             f"{resume_ck.get('step_in_epoch', 0)} step(s) done)", main)
    else:
        run_dir = Path(D.broadcast_object(str(new_run_dir(cfg)) if main else None))
        cfg.output_dir = str(run_dir)
    D.check_same_config(cfg.to_dict())
    if main:
        write_config(cfg, run_dir)
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
    if hasattr(objective, "prepare"):
        objective.prepare(data, env.device)  # i-MAE: check labels for pairing, load the teacher
    model.to(env.device)
    net: nn.Module = model
    if t.compile:
        net = torch.compile(net)
    if env.distributed:
        net = DDP(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = absolute_lr(t.blr, t.lr, eff_batch)
    optimizer = build_adamw(model, base_lr, t.weight_decay, t.betas, env.device)
    state = TrainState()
    if resume_ck is not None:
        ckpt.load_state_dict(model, resume_ck["model"], source=resume_ck["_path"])
        try:
            optimizer.load_state_dict(resume_ck["optimizer"])
        except (KeyError, ValueError) as e:
            raise TrainingError(f"the optimiser state of {resume_ck['_path']} does not fit ({e})") from None
        state = TrainState(resume_ck.get("epoch", -1), resume_ck.get("step_in_epoch", 0),
                           resume_ck.get("global_step", 0), resume_ck.get("nonfinite_skipped", 0))
        del resume_ck

    loader = build_train_loader(
        data, t.batch_size, arch.img_size, env.device, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
        class_pairs=getattr(objective, "class_pairs", False), scale=cfg.data.crop_scale,
        ratio=cfg.data.crop_ratio, hflip=cfg.data.hflip, num_workers=cfg.data.num_workers,
        skip_corrupt=cfg.data.skip_corrupt)
    steps = len(loader)
    log = RunLog(run_dir, enabled=main)
    if state.epoch < 0 and state.step_in_epoch == 0:
        info(f"training {cfg.method} {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
             f"parameters) on {len(data)} {cfg.data.dataset} images, {steps} steps/epoch x {t.epochs} epochs, "
             f"{env.world_size} process(es) on {env.device.type}; lr {base_lr:.3g}; writing {run_dir}", main)
        if t.warmup_epochs > t.epochs:
            info(f"note: warmup_epochs {t.warmup_epochs:g} > epochs {t.epochs}: the learning rate warms up "
                 f"for the whole run", main)
        log.write("event", {"event": "start", "version": __version__, "world_size": env.world_size,
                            "images": len(data), "steps_per_epoch": steps, "lr": base_lr})

    loop = _Loop(cfg, env, objective, net, optimizer, loader, log, run_dir, base_lr, state)
    try:
        with _StopRequest() as stop:
            loop.stop = stop
            for epoch in range(state.epoch + 1, t.epochs):
                if not loop.run_epoch(epoch) or (epoch + 1 < t.epochs and loop.stop_requested()):
                    loop.report_stop()
                    return run_dir  # stopped by a signal; checkpoint written
    finally:
        log.close()
    info(f"done: {run_dir}", main)
    return run_dir


class _Loop:
    """One training run's epoch loop (kept as an object so its state is in one place)."""

    def __init__(self, cfg: Config, env: D.DistEnv, objective, net: nn.Module, optimizer, loader, log: RunLog,
                 run_dir: Path, base_lr: float, state: TrainState) -> None:
        self.cfg, self.env, self.objective, self.net = cfg, env, objective, net
        self.model: nn.Module = objective.model
        self.optimizer, self.loader, self.log, self.run_dir = optimizer, loader, log, run_dir
        self.base_lr, self.state = base_lr, state
        self.stop: _StopRequest | None = None
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.train.amp and env.device.type == "cuda"
                         else contextlib.nullcontext())

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (from ``state.step_in_epoch``). Returns False when a stop signal ended it."""
        t, st, env = self.cfg.train, self.state, self.env
        steps = len(self.loader)
        start = st.step_in_epoch
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        seen, skipped_files, t0 = 0, 0, time.time()
        bar = progress(steps, start, f"epoch {epoch + 1}/{t.epochs}", env.is_main)
        group_bad = False
        for step, batch in self.loader.batches(epoch, start):
            group_start = step - step % t.accum_iter
            group_size = min(t.accum_iter, steps - group_start)
            last_micro = step == group_start + group_size - 1
            if step == group_start:
                lr = lr_at(epoch + step / steps, self.base_lr, t.min_lr, t.warmup_epochs, t.epochs)
                set_lr(self.optimizer, lr)
                group_bad = False
            sync = contextlib.nullcontext() if last_micro or not isinstance(self.net, DDP) else self.net.no_sync()
            with sync:
                with self.autocast:
                    out = self.objective(self.net, batch, t.mask_ratio)
                loss = out["loss"]
                finite = D.all_true(bool(torch.isfinite(loss).item()), env.device)
                if finite and not group_bad:
                    (loss / group_size).backward()
                else:
                    group_bad = True
            if not finite:
                self._nonfinite(epoch, step, out)
            for k, v in out.items():
                if v.ndim == 0 and finite:
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
            seen += batch.images.shape[0]
            skipped_files += batch.skipped
            bar.update(1)
            if not last_micro:
                continue
            if group_bad:
                self.optimizer.zero_grad(set_to_none=True)
            else:
                if t.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            st.global_step += 1
            st.step_in_epoch = step + 1
            if st.global_step % t.log_every == 0 and finite:
                rec = {k: float(v.detach()) for k, v in out.items() if v.ndim == 0}
                rec.update(epoch=epoch, step=st.global_step, lr=self.optimizer.param_groups[0]["lr"])
                self.log.write("step", rec, step=st.global_step, prefix="train")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if step + 1 < steps and self.stop_requested():
                bar.close()
                self._save(epoch - 1, step + 1, numbered=False)
                return False
            if t.save_every_steps and st.global_step % t.save_every_steps == 0 and step + 1 < steps:
                self._save(epoch - 1, step + 1, numbered=False)
        bar.close()
        metrics = self._epoch_metrics(sums, steps - start, seen, time.time() - t0, skipped_files)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.log.write("epoch", {"epoch": epoch, **metrics}, step=epoch, prefix="epoch")
        self.log.flush()
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("images_per_s", "lr", "time_s"))
        info(f"epoch {epoch + 1}/{t.epochs}: {summary}; {metrics['images_per_s']:.0f} img/s"
             + (f"; skipped {skipped_files} unreadable files" if skipped_files else ""), env.is_main)
        st.step_in_epoch = 0
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
        sig = self.stop.signal if self.stop and self.stop.signal else signal.SIGTERM
        st = self.state
        info(f"stopped by {signal.Signals(sig).name} after {st.epoch + 1} epoch(s) and {st.step_in_epoch} step(s); "
             f"checkpoint written; continue with: imae pretrain --resume {self.run_dir}", self.env.is_main)
        self.log.write("event", {"event": "stopped", "signal": int(sig), "epoch": st.epoch,
                                 "step_in_epoch": st.step_in_epoch})

    def _nonfinite(self, epoch: int, step: int, out: dict[str, torch.Tensor]) -> None:
        st, t = self.state, self.cfg.train
        st.nonfinite_skipped += 1
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.items() if v.ndim == 0)
        self.log.write("event", {"event": "nonfinite", "epoch": epoch, "step": step, "terms": terms})
        if st.nonfinite_skipped <= t.skip_nonfinite:
            info(f"non-finite loss at epoch {epoch + 1} step {step + 1} ({terms}); update skipped "
                 f"({st.nonfinite_skipped}/{t.skip_nonfinite} allowed)", self.env.is_main)
            return
        last = ckpt.latest_complete(self.run_dir) if self.env.is_main else None
        where = f"last good checkpoint: {last[0]}" if last else "no checkpoint was written yet"
        raise TrainingError(f"loss became non-finite at epoch {epoch + 1} step {step + 1} ({terms}); {where}; "
                            f"lower the learning rate or set train.clip_grad, or tolerate it with "
                            f"--skip-nonfinite N")

    def _epoch_metrics(self, sums: dict[str, torch.Tensor], steps: int, seen: int, seconds: float,
                       skipped: int) -> dict[str, float]:
        names = sorted(sums)
        if names:
            vec = torch.stack([sums[k] for k in names]).to(self.env.device)
            vec = D.all_reduce_sum(vec) / (max(steps, 1) * D.world_size())
            metrics = {k: float(v) for k, v in zip(names, vec.tolist())}
        else:
            metrics = {}
        if hasattr(self.objective, "epoch_stats"):
            metrics.update(self.objective.epoch_stats())
        metrics["images_per_s"] = seen * D.world_size() / max(seconds, 1e-9)
        metrics["time_s"] = seconds
        if skipped:
            metrics["skipped_files"] = float(skipped)
        return metrics

    def _save(self, epoch: int, step_in_epoch: int, numbered: bool, metrics: dict | None = None) -> None:
        """Write checkpoint-last.pth (and checkpoint-<epoch>.pth); rank 0 only."""
        self.state.epoch, self.state.step_in_epoch = epoch, step_in_epoch
        if not self.env.is_main:
            return
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
            "version": __version__,
            **self.objective.checkpoint_meta(),
        }
        ckpt.save_atomic(obj, self.run_dir / "checkpoint-last.pth")
        if numbered:
            ckpt.save_atomic(obj, self.run_dir / f"checkpoint-{epoch}.pth")
            ckpt.prune(self.run_dir, self.cfg.train.keep_last)
