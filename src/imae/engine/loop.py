"""The one training loop of pre-training (MAE, i-MAE) and fine-tuning (classification).

``Loop`` runs the epochs of a run and does, once for every objective: gradient accumulation, the
per-iteration lr schedule, bf16 autocast, DDP's ``no_sync``, the non-finite policy (device flags, read
once per logging interval; a bad update is never applied), stop on SIGTERM / SIGINT with a mid-epoch
checkpoint, ``max_steps`` smoke runs, atomic checkpoints (numbered and ``checkpoint-last``, pruning),
exact resume, progress bars and JSON-lines / TensorBoard records.

What it trains is an :class:`~imae.engine.objectives.base.Objective` (``imae.engine.objectives``,
``imae.finetune.objective``): the loss terms of a batch, what its checkpoints carry, and no-op hooks
(per-step batch preparation, an epoch's evaluation, statistics beside the terms). Where it writes, and the
settings it reads (a ``LoopConfig``: pre-training's ``train:`` or fine-tuning's ``finetune:`` section), are
its :class:`~imae.engine.session.RunSession`'s. An epoch is ``_micro_step`` (forward, backward),
``_optimizer_step`` (gradient check, update) and ``_checkpoint_step`` (step record, mid-epoch checkpoint, stop);
the non-finite flags wait on the device in :class:`PendingChecks` until the host reads them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from imae import __version__
from imae.checkpoints.files import latest_complete, prune, save_checkpoint, with_checksum
from imae.console import info, progress
from imae.engine.objectives.base import Objective
from imae.engine.session import RunSession
from imae.engine.signals import StopRequest
from imae.errors import ConfigError, TrainingError
from imae.runtime import distributed as D
from imae.runtime import precision
from imae.runtime.optim import grad_norm, lr_at, set_lr, step_unless


@dataclass
class TrainState:
    epoch: int = -1  # last completed epoch (as the official MAE); -1 before the first
    step_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained on
    global_step: int = 0  # optimiser steps taken
    nonfinite_skipped: int = 0
    # stopped mid-epoch: the running sums of the epoch's finished steps (loss terms summed over ranks,
    # per-rank step and image counts, seconds), so the resumed epoch's record equals an uninterrupted one's
    partial: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(cls, ck: Mapping[str, Any] | None) -> TrainState:
        """The state a checkpoint records (a new run's for None)."""
        if ck is None:
            return cls()
        step = ck.get("step_in_epoch", 0)
        partial = ck.get("partial") if step else None
        return cls(ck.get("epoch", -1), step, ck.get("global_step", 0), ck.get("nonfinite_skipped", 0), partial)


def layout_of(params, env: D.DistEnv, images: int | None = None) -> dict[str, int]:
    """What fixes the batches of an epoch: per-process batch size, accumulation, processes (and the number of
    training images, where known)."""
    out = {"batch_size": params.batch_size, "accum_iter": params.accum_iter, "world_size": env.world_size}
    if images is not None:
        out["images"] = int(images)
    return out


def check_layout(ck: dict[str, Any], params, env: D.DistEnv, section: str, run_dir: Path,
                 images: int | None = None) -> None:
    """A run stopped mid-epoch resumes only with the batch layout it stopped with, and with as many training
    images (``images``, when given): else the rest of the epoch's batch plan would differ (some images seen
    twice, others not at all)."""
    saved = ck.get("layout")
    if not ck.get("step_in_epoch") or saved is None:
        return
    layout = layout_of(params, env)
    if {k: saved.get(k) for k in layout} != layout:
        raise ConfigError(f"{run_dir} stopped in the middle of an epoch with {_describe(saved, section)}; "
                          f"resume it with the same (now {_describe(layout, section)})")
    if images is not None and saved.get("images") not in (None, images):
        cap = "data.max_per_class" if section == "train" else "data.train_per_class"
        raise ConfigError(f"{run_dir} stopped in the middle of an epoch of {saved['images']} training images, but "
                          f"the data set now has {images}; resume it with the same images (check --data-path and "
                          f"{cap}), else the rest of the epoch would see some images twice and others never")


def _describe(layout: dict[str, int], section: str) -> str:
    return (f"{section}.batch_size={layout['batch_size']}, {section}.accum_iter={layout['accum_iter']} on "
            f"{layout['world_size']} process(es)")


def wrap(model: nn.Module, env: D.DistEnv, compile: bool = False) -> nn.Module:
    """The module a step calls: DDP across processes, then torch.compile (PyTorch's order: gradient
    buckets overlap the backward)."""
    net = model
    if env.distributed:
        net = DDP(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    return net


# section -> (the progress bar's and epoch line's word, the TensorBoard group of step records)
_WORDS = {"train": ("epoch", "train"), "finetune": ("fine-tune", "finetune")}


class PendingChecks:
    """The micro-steps whose non-finite flags the host has not read yet.

    Each holds device tensors: its flags [loss, gradients] (the gradient flag and norm are set on the last
    micro-step of an accumulation group), its loss terms and the group's gradient norm. ``read`` takes them
    all in one host sync (across processes, one collective): once per logging interval, or every step on a
    CPU, where a read costs nothing.
    """

    def __init__(self, distributed: bool) -> None:
        self.distributed = distributed
        self.names: list[str] = []  # the loss terms' names, in the order of each step's terms
        self._steps: list[int] = []
        self._flags: list[torch.Tensor] = []
        self._terms: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []

    def add(self, step: int, loss_bad: torch.Tensor, names: list[str], terms: torch.Tensor) -> None:
        self.names = names
        self._steps.append(step)
        self._flags.append(torch.stack([loss_bad, torch.zeros_like(loss_bad)]))
        self._terms.append(terms)
        self._norms.append(torch.zeros_like(terms[0]))

    def add_gradients(self, loss_bad: torch.Tensor, grads_bad: torch.Tensor, norm: torch.Tensor) -> None:
        """The gradient check of the group that the last added micro-step ends."""
        self._flags[-1] = torch.stack([loss_bad, grads_bad])
        self._norms[-1] = norm

    def read(self) -> list[tuple[int, bool, bool, float, list[float]]]:
        """(step, loss non-finite, gradients non-finite, gradient norm, loss terms) of every pending micro-step,
        in order; empties the list. A step is non-finite when it is on any rank (every rank then skipped it)."""
        if not self._steps:
            return []
        flags = torch.stack(self._flags).float()  # [n, 2]: loss, gradients
        if self.distributed:
            flags = D.all_reduce_sum(flags)
        vals = torch.cat([flags, torch.stack(self._norms)[:, None], torch.stack(self._terms)], dim=1).tolist()
        out = [(step, row[0] > 0, row[1] > 0, row[2], row[3:]) for step, row in zip(self._steps, vals)]
        self._steps, self._flags, self._terms, self._norms = [], [], [], []
        return out


@dataclass
class EpochRun:
    """The running state of one epoch: the loss terms' sums (device tensors), counts and timers."""

    epoch: int
    start: int  # the first step (a resumed epoch's steps before it are in the sums already)
    steps: int
    pending: PendingChecks
    group_bad: torch.Tensor  # whether any micro-step of the current accumulation group was non-finite
    bar: Any
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    finite_steps: Any = 0  # an int, or a device tensor while steps are added
    seen: int = 0
    skipped_files: int = 0
    data_s: float = 0.0  # time spent waiting for batches (data on the critical path)
    t0: float = 0.0
    tick: float = 0.0
    nonfinite_before: int = 0  # the run's count of skipped (non-finite) steps when this epoch began
    rows: list[tuple[bool, list[float]]] = field(default_factory=list)  # (skipped, loss terms) of the last read
    loss_bad: Any = None  # the last micro-step's non-finite loss flag (a device tensor)


class Loop:
    """One training run's epochs (kept as an object so its state is in one place).

    ``session``: the run (:class:`~imae.engine.session.RunSession`: folder, settings, log, configuration saved in
    every checkpoint, the command that continues a stopped run); ``load_skipped``: unreadable files dropped
    when the data set was loaded.
    """

    def __init__(self, session: RunSession, objective: Objective, net: nn.Module, optimizer: torch.optim.Optimizer,
                 loader, state: TrainState, base_lr: float, load_skipped: int = 0) -> None:
        self.session, self.objective, self.net, self.model = session, objective, net, objective.model
        self.optimizer, self.loader, self.state, self.base_lr = optimizer, loader, state, base_lr
        self.settings, self.env, self.log, self.run_dir = session.settings, session.env, session.log, session.run_dir
        self.section = session.section
        self.desc, self.step_prefix = _WORDS[self.section]
        self.load_skipped = load_skipped
        self.stop: StopRequest | None = None
        self.max_reached = False
        plan = getattr(loader, "plan", None)  # the training images, recorded so a mid-epoch resume can check them
        self.images: int | None = len(plan.labels) if plan is not None else None
        # the lr schedule's length (and warm-up) in epochs: a smoke run (max_steps) gets it compressed
        p = self.settings
        self.sched_epochs: float = p.epochs
        self.sched_warmup: float = p.warmup_epochs
        if p.max_steps:
            span = min(float(p.epochs), p.max_steps / math.ceil(len(loader) / p.accum_iter))
            self.sched_epochs, self.sched_warmup = span, p.warmup_epochs * span / p.epochs
        self.autocast = precision.autocast(self.env.device, p.amp)  # bf16 where the device has bf16 units
        # the host reads the device once per logging interval (on a CPU, where a read costs nothing, every step)
        self.read_every_step = self.env.device.type == "cpu"
        self.monitor: Callable[[int, dict], None] | None = None  # pre-training's TrainingMonitor, set by train.py

    def run(self) -> str:
        """Train the remaining epochs. Returns ``done``, ``max_steps`` (``settings.max_steps`` reached;
        checkpoint written) or ``stopped`` (by a signal; checkpoint written, the stop reported)."""
        p, st = self.settings, self.state
        with StopRequest() as stop:
            self.stop = stop
            for epoch in range(st.epoch + 1, p.epochs):
                if p.max_steps and st.global_step >= p.max_steps:
                    return "max_steps"  # resumed after its last step
                ended = self.run_epoch(epoch)
                if self.max_reached:
                    self.log.write("event", {"event": "max_steps", "global_step": st.global_step})
                    return "max_steps"
                if not ended or (epoch + 1 < p.epochs and self.stop_requested()):
                    self.report_stop()
                    return "stopped"
        return "done"

    def lr(self) -> float:
        """The learning rate of the unscaled parameter groups (layer decay scales the others down)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (from ``state.step_in_epoch``). Returns False when a stop signal (or ``max_steps``)
        ended it inside the epoch, after a mid-epoch checkpoint."""
        run = self._begin_epoch(epoch)
        for step, batch in self.loader.batches(epoch, run.start):
            run.data_s += time.perf_counter() - run.tick
            batch = self.objective.prepare_batch(batch, epoch, step, self.env.rank)
            if self._micro_step(run, step, batch):  # the last micro-step of its accumulation group
                self._optimizer_step(run, step)
                if self._checkpoint_step(run, step):
                    return False
            run.tick = time.perf_counter()
        run.bar.close()
        self._read(run)
        self._end_epoch(run)
        return True

    def _begin_epoch(self, epoch: int) -> EpochRun:
        """The epoch's running state; a resumed one continues the sums of the steps done before the stop."""
        st, env = self.state, self.env
        self.model.train()
        start = st.step_in_epoch
        run = EpochRun(epoch, start, len(self.loader), PendingChecks(env.distributed),
                       torch.zeros((), dtype=torch.bool, device=env.device),
                       progress(len(self.loader), start, f"{self.desc} {epoch + 1}/{self.settings.epochs}",
                                env.is_main), t0=time.time())
        part, st.partial = (st.partial or {}) if start else {}, None
        if part:  # rank 0 holds the sums of the steps done before the stop
            for k, v in part.get("sums", {}).items():
                run.sums[k] = torch.tensor(float(v) if env.is_main else 0.0, device=env.device)
            run.finite_steps, run.seen = int(part.get("finite_steps", 0)), int(part.get("seen", 0))
            run.skipped_files, run.data_s = int(part.get("skipped_files", 0)), float(part.get("data_wait_s", 0.0))
            run.t0 -= float(part.get("time_s", 0.0))
            if part.get("objective") is not None:
                self.objective.resume_stats(part["objective"], env.is_main)
        run.nonfinite_before = st.nonfinite_skipped - int(part.get("nonfinite_steps", 0))
        run.tick = time.perf_counter()
        return run

    def _micro_step(self, run: EpochRun, step: int, batch) -> bool:
        """Forward and backward of one micro-batch (its lr set at the start of its group); its loss terms join the
        epoch's sums unless non-finite. Returns whether it ends its accumulation group."""
        p = self.settings
        group_start = step - step % p.accum_iter
        group_size = min(p.accum_iter, run.steps - group_start)
        last_micro = step == group_start + group_size - 1
        if step == group_start:
            set_lr(self.optimizer, lr_at(run.epoch + step / run.steps, self.base_lr, p.min_lr, self.sched_warmup,
                                         self.sched_epochs))
        ddp = getattr(self.net, "_orig_mod", self.net)  # under torch.compile, DDP is the compiled module
        sync = contextlib.nullcontext() if last_micro or not isinstance(ddp, DDP) else ddp.no_sync()
        with sync:
            with self.autocast:
                out = self.objective(self.net, batch)
            loss = out["loss"]
            # a device-side flag, not .item(): the host does not wait for the forward pass; a non-finite
            # group is skipped by the optimiser itself (found_inf, as under GradScaler)
            bad = ~torch.isfinite(loss.detach())
            run.group_bad = bad if step == group_start else run.group_bad | bad
            run.loss_bad = bad
            (loss / group_size).backward()
        names = [k for k, v in out.items() if v.ndim == 0]
        terms = torch.stack([out[k].detach().float() for k in names])
        run.pending.add(step, bad, names, terms)
        for k, v in zip(names, terms.unbind()):
            run.sums[k] = run.sums.get(k, 0.0) + torch.where(bad, 0.0, v)
        run.finite_steps = run.finite_steps + (~bad).long()
        if self.read_every_step and not last_micro:  # the last one is read with its gradient check
            run.rows = self._read(run)
        run.seen += batch.images.shape[0]
        run.skipped_files += getattr(batch, "skipped", 0)
        run.bar.update(1)
        return last_micro

    def _optimizer_step(self, run: EpochRun, step: int) -> None:
        """Check the group's gradients and apply its update unless a loss or gradient was non-finite."""
        p, st = self.settings, self.state
        # a finite loss can still give inf / NaN gradients: check their norm (clipping computes it anyway),
        # on the device; the group's flags join the pending row of its last micro-step
        norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.clip_grad) if p.clip_grad
                else grad_norm(self.model.parameters())).detach().float()
        grad_bad = ~torch.isfinite(norm) & ~run.group_bad
        run.pending.add_gradients(run.loss_bad, grad_bad, norm)
        if self.read_every_step:
            run.rows = self._read(run)
        found = (run.group_bad | grad_bad).float()
        step_unless(self.optimizer, D.all_reduce_sum(found) if self.env.distributed else found)
        self.optimizer.zero_grad(set_to_none=True)
        st.global_step += 1
        st.step_in_epoch = step + 1

    def _checkpoint_step(self, run: EpochRun, step: int) -> bool:
        """After an update: the step record, and a mid-epoch checkpoint when ``save_every_steps`` asks, a stop
        signal came or ``max_steps`` is reached. Returns True when the epoch ends here (stop, max_steps)."""
        p, st, env = self.settings, self.state, self.env
        log_step = st.global_step % p.log_every == 0
        inside = step + 1 < run.steps
        save_step = bool(p.save_every_steps) and st.global_step % p.save_every_steps == 0 and inside
        if (log_step or save_step) and not self.read_every_step:
            run.rows = self._read(run)
        if log_step and run.rows and not run.rows[-1][0]:
            rec = dict(zip(run.pending.names, run.rows[-1][1]))
            rec.update(epoch=run.epoch + 1, step=st.global_step, lr=self.lr())
            self.log.write("step", rec, step=st.global_step, prefix=self.step_prefix)
            run.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
        if p.max_steps and st.global_step >= p.max_steps:
            self.max_reached = True
            if inside:
                self._stop_inside(run, step)
                return True
        if inside:
            # across processes the stop check is a collective: once per logging interval, not per step
            if (not env.distributed or log_step or save_step) and self.stop_requested():
                self._stop_inside(run, step)
                return True
            if save_step:
                self._save(run.epoch - 1, step + 1, numbered=False, partial=self._running(run))
        return False

    def _stop_inside(self, run: EpochRun, step: int) -> None:
        """End the epoch after ``step``: a mid-epoch checkpoint with its running sums."""
        self._read(run)
        run.bar.close()
        self._save(run.epoch - 1, step + 1, numbered=False, partial=self._running(run))

    def _running(self, run: EpochRun) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps of the epoch's sums (one collective, on every rank)."""
        st, env = self.state, self.env
        names = sorted(run.sums)
        total = D.all_reduce_sum(torch.stack([run.sums[k] for k in names]).to(env.device)) if names else None
        stats = self.objective.running_stats()
        return {"sums": {k: float(v) for k, v in zip(names, total.tolist())} if names else {},
                "finite_steps": int(run.finite_steps), "seen": run.seen, "skipped_files": run.skipped_files,
                "data_wait_s": run.data_s, "time_s": time.time() - run.t0,
                "nonfinite_steps": st.nonfinite_skipped - run.nonfinite_before,
                **({"objective": stats} if stats is not None else {})}

    def _end_epoch(self, run: EpochRun) -> None:
        """The epoch's record and line, the check that most of it trained, and its checkpoint."""
        p, st, env, epoch, steps = self.settings, self.state, self.env, run.epoch, run.steps
        metrics = self._epoch_metrics(run.sums, int(run.finite_steps), run.seen, time.time() - run.t0,
                                      run.skipped_files + self.load_skipped)
        metrics["data_wait_s"] = run.data_s
        metrics["images"] = float(run.seen * D.world_size())
        metrics["lr"] = self.lr()
        nonfinite = st.nonfinite_skipped - run.nonfinite_before
        if nonfinite:
            metrics["nonfinite_skipped"] = float(nonfinite)
        self.objective.end_epoch(epoch, metrics)  # e.g. fine-tuning's evaluation on the test split
        if self.monitor is not None:  # imae.engine.monitor: frozen measures, rank 0, every N epochs
            self.monitor(epoch, metrics)
        self.log.write("epoch", {"epoch": epoch + 1, **metrics}, step=epoch + 1, prefix="epoch")  # 1-based
        self.log.flush()
        shown = ("images_per_s", "lr", "time_s", "skipped_files", "data_wait_s", "images", "nonfinite_skipped")
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in shown)
        info(f"{self.desc} {epoch + 1}/{p.epochs}: {summary}; {metrics['images_per_s']:.0f} img/s"
             + (f"; {metrics['skipped_files']:.0f} unreadable file(s) skipped" if metrics.get("skipped_files") else "")
             + (f"; {nonfinite} of {steps} step(s) skipped as non-finite"
                if nonfinite else ""), env.is_main)
        if 2 * nonfinite > steps:  # most of the epoch was not trained on: its weights are not to be trusted
            s = self.section
            self.log.write("event", {"event": "mostly_nonfinite", "epoch": epoch + 1, "skipped": nonfinite,
                                     "steps": steps})
            raise TrainingError(f"{nonfinite} of the {steps} steps of epoch {epoch + 1} were non-finite and skipped; "
                                f"stopped without saving this epoch; {self._last_good()}; lower the learning rate "
                                f"({s}.blr) or set {s}.clip_grad (a larger skip_nonfinite does not help)")
        numbered = (epoch + 1) % max(p.save_every, 1) == 0 or epoch + 1 == p.epochs
        self._save(epoch, 0, numbered=numbered, metrics=metrics)

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
             f"written; continue with: {self.session.resume_hint}", self.env.is_main)
        # "epoch": the epoch in progress (1-based, as in step and epoch records), of which step_in_epoch are done
        self.log.write("event", {"event": "stopped", "signal": name, "epoch": st.epoch + 2,
                                 "step_in_epoch": st.step_in_epoch, "epochs_done": st.epoch + 1})

    def _read(self, run: EpochRun) -> list[tuple[bool, list[float]]]:
        """Read the pending micro-steps of ``run`` (:meth:`PendingChecks.read`) and report each non-finite one.
        Returns (skipped, loss terms) per step."""
        rows = []
        for step, loss_bad, grads_bad, norm, terms in run.pending.read():
            named = dict(zip(run.pending.names, terms))
            if loss_bad:
                self._nonfinite(run.epoch, step, named)
            elif grads_bad:
                self._nonfinite(run.epoch, step, named, grad_norm=norm)
            rows.append((loss_bad or grads_bad, terms))
        return rows

    def _nonfinite(self, epoch: int, step: int, out: dict[str, float], grad_norm: float | None = None) -> None:
        """A non-finite loss, or (``grad_norm``) non-finite gradients of a finite loss: skip or stop."""
        st, p, s = self.state, self.settings, self.section
        st.nonfinite_skipped += 1
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.items())
        what = "loss"
        if grad_norm is not None:
            what, terms = "gradient norm", f"grad_norm={grad_norm:.4g}; {terms}"
        self.log.write("event", {"event": "nonfinite", "epoch": epoch + 1, "step": step + 1, "terms": terms})
        if st.nonfinite_skipped <= p.skip_nonfinite:
            info(f"non-finite {what} at epoch {epoch + 1} step {step + 1} ({terms}); update skipped "
                 f"({st.nonfinite_skipped}/{p.skip_nonfinite} allowed)", self.env.is_main)
            return
        tolerate = "--skip-nonfinite N" if s == "train" else f"--set {s}.skip_nonfinite=N"
        raise TrainingError(f"{what} became non-finite at epoch {epoch + 1} step {step + 1} ({terms}); the update "
                            f"was not applied; {self._last_good()}; lower the learning rate ({s}.blr) or set "
                            f"{s}.clip_grad, or tolerate it with {tolerate}")

    def _last_good(self) -> str:
        last = latest_complete(self.run_dir) if self.env.is_main else None
        return f"last good checkpoint: {last[0]}" if last else "no checkpoint was written yet"

    def _epoch_metrics(self, sums: dict[str, torch.Tensor], steps: int, seen: int, seconds: float,
                       skipped: int) -> dict[str, float]:
        names = sorted(sums)
        metrics: dict[str, float] = {}
        if names:
            vec = torch.stack([sums[k] for k in names]).to(self.env.device)
            vec = D.all_reduce_sum(vec) / (max(steps, 1) * D.world_size())
            metrics = {k: float(v) for k, v in zip(names, vec.tolist())}
        metrics.update(self.objective.epoch_stats())
        metrics["images_per_s"] = seen * D.world_size() / max(seconds, 1e-9)
        metrics["time_s"] = seconds
        if skipped:
            metrics["skipped_files"] = float(skipped)
        return metrics

    def _save(self, epoch: int, step_in_epoch: int, numbered: bool, metrics: dict | None = None,
              partial: dict | None = None) -> None:
        """Write checkpoint-last.pth (and checkpoint-<epoch>.pth) on rank 0; every rank stops if that fails."""
        # the state matches the checkpoint: a mid-epoch one's running sums too (a smoke run's last record uses them)
        self.state.epoch, self.state.step_in_epoch, self.state.partial = epoch, step_in_epoch, partial
        error: TrainingError | None = None
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad and self.env.is_main:  # never replace a good checkpoint by a broken one
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            error = TrainingError(f"the weights became non-finite ({bad[0]}{more}) after {self.state.global_step} "
                                  f"steps; no checkpoint written; {self._last_good()}; lower the learning rate or set "
                                  f"{self.section}.clip_grad")
        elif self.env.is_main:
            obj = with_checksum({  # computed once for both files
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.state.global_step,
                "nonfinite_skipped": self.state.nonfinite_skipped,
                "config": self.session.config,
                "scaler": None,  # bf16 autocast needs no loss scaling
                "rng": {"torch": torch.get_rng_state()},
                "metrics": metrics or {},
                "partial": partial,
                "layout": layout_of(self.settings, self.env, self.images),
                "version": __version__,
                **self.objective.checkpoint_meta(),
            })
            try:
                fmt = self.settings.checkpoint_format
                save_checkpoint(obj, self.run_dir / "checkpoint-last.pth", fmt)
                if numbered:
                    save_checkpoint(obj, self.run_dir / f"checkpoint-{epoch + 1}.pth", fmt)  # 1-based, as the logs
                    prune(self.run_dir, self.settings.keep_last)
            except TrainingError as e:
                error = e
        if not D.all_true(error is None, self.env.device):
            self.log.write("event", {"event": "checkpoint_failed", "error": str(error) if error else "on rank 0"})
            raise error or TrainingError("rank 0 could not write a checkpoint (see its error); use --resume auto")
