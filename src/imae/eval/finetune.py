"""End-to-end fine-tuning of the encoder as a timm ViT classifier (MAE's ``main_finetune.py`` recipe).

Layer-wise lr decay, AdamW, per-iteration warmup + half-cycle cosine, mixup/cutmix with label smoothing
(``timm.data.Mixup`` + ``SoftTargetCrossEntropy``), drop path, RandAugment + random erasing
(``timm.data.create_transform``), cls-token pooling. One process, or N processes launched by torchrun
(DDP; gloo on CPUs, NCCL on GPUs), as pre-training. Writes a run directory: ``config.yaml``,
``log.jsonl``, ``tb/``, ``checkpoint-last.pth`` (+ ``checkpoint-<epoch>.pth``) and ``finetune.json``.

Every random draw of a step (augmentation, batch order, mixup/cutmix, drop path) is a function of
(seed, epoch, step, rank, image), so SIGTERM / SIGINT (checkpoint at the next step, exit 0) or SIGKILL
(the last epoch's checkpoint stays) followed by ``--resume`` ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from imae.config import save_config
from imae.config.finetune import FinetuneConfig
from imae.data.loader import derive_seed, ignore_stop_signals
from imae.engine import checkpoint as ckpt
from imae.engine import distributed as D
from imae.engine.logs import RunLog, info, progress
from imae.engine.optim import grad_norm, lr_at, set_lr, step_unless
from imae.engine.run_dir import find_resume, lock_run_dir, prepare_run_dir
from imae.engine.signals import StopRequest
from imae.errors import CheckpointError, ConfigError, DataError, TrainingError
from imae.eval.data import Split
from imae.eval.features import eval_precision
from imae.eval.finetune_data import FinetuneImages, training_loader, transforms
from imae.eval.results import write_result
from imae.eval.run import Session, open_session
from imae.eval.vit import layer_decay_groups, vit_from_encoder


def finetune(ckpt_spec: str | Path, *, preset: str | None = None, overrides: dict[str, Any] | None = None,
             sets: list[str] | None = None, resume: str | None = None) -> Path:
    """Fine-tune ``ckpt_spec`` (checkpoint or run directory); returns the fine-tune's run directory.

    ``resume``: continue a stopped fine-tune: its run directory, one of its checkpoints, or ``auto`` (this
    command's output folder if it holds a fine-tune checkpoint, else start fresh). The fine-tune's saved
    configuration applies, with the flags given here (``overrides``, ``sets``) on top."""
    s = open_session(ckpt_spec, preset=preset, overrides=overrides, sets=sets, cls=FinetuneConfig, move=False)
    resume_ck = None
    if resume:
        found = find_resume(resume, str(_run_dir(s)))
        if found is not None:
            run_dir, _, resume_ck = found
            s = _resumed_session(ckpt_spec, run_dir, resume_ck, overrides, sets)
    env = D.setup(s.cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            return _finetune(s, env, resume_ck, stack)
    except RuntimeError as e:
        if not D.is_peer_error(e):
            raise
        raise TrainingError(f"rank {env.rank} lost contact with another fine-tuning process ({D.short(e)}); the "
                            f"last checkpoint is intact: restart the job with --resume auto") from None
    finally:
        D.cleanup()


def _run_dir(s: Session) -> Path:
    return Path(s.cfg.output_dir) if s.cfg.output_dir else s.subject.default_output_dir / "finetune"


def _resumed_session(ckpt_spec: str | Path, run_dir: Path, ck: dict[str, Any], overrides: dict[str, Any] | None,
                     sets: list[str] | None) -> Session:
    """The session of a fine-tune being resumed: its saved configuration, explicit flags on top."""
    if ck.get("kind") != "vit" or not isinstance(ck.get("config"), dict) or "finetune" not in ck["config"]:
        raise CheckpointError(f"{ck['_path']} is not a checkpoint of `imae finetune`; --resume takes a fine-tune's "
                              f"run directory (or auto)")
    base = copy.deepcopy(ck["config"])
    base["output_dir"] = str(run_dir)
    flags = {k: v for k, v in (overrides or {}).items() if k != "output_dir"}
    return open_session(ckpt_spec, base=base, overrides=flags, sets=sets, cls=FinetuneConfig, move=False)


def _finetune(s: Session, env: D.DistEnv, resume_ck: dict[str, Any] | None, stack: contextlib.ExitStack) -> Path:
    cfg: FinetuneConfig = s.cfg
    t, main = cfg.finetune, env.is_main
    D.check_same_config(cfg.to_dict())
    run_dir = _run_dir(s)
    if main:
        prepare_run_dir(run_dir, fresh=resume_ck is None)
    lock = lock_run_dir(run_dir, env)  # released when the fine-tune ends
    if lock is not None:
        stack.callback(lock.release)
        save_config(cfg, run_dir / "config.yaml")
    train, test = s.split("train"), s.split("eval")
    if not (train.has_labels and test.has_labels):
        raise DataError(f"fine-tuning needs class labels; {test.data.name} has none")
    torch.manual_seed(cfg.seed)  # identical head initialisation on every rank
    device = env.device
    vit = vit_from_encoder(s.subject.model, train.num_classes, t.drop_path, t.pool).to(device)

    tf_train, tf_test = transforms(cfg, train.size, train.data.mean, train.data.std, train.data.images is not None)
    loader = training_loader(train, tf_train, cfg, env.rank, env.world_size, device.type == "cuda")
    batches = loader.batch_sampler
    steps = batches.plan.steps_per_epoch
    mixup, criterion = _mixing(t, train.num_classes)
    eff_batch = t.batch_size * t.accum_iter * env.world_size
    base_lr = t.blr * eff_batch / 256
    optimizer = torch.optim.AdamW(layer_decay_groups(vit, t.weight_decay, t.layer_decay), lr=base_lr, betas=t.betas,
                                  fused=device.type == "cuda")
    st = _State.start(resume_ck)
    layout = {"batch_size": t.batch_size, "accum_iter": t.accum_iter, "world_size": env.world_size}
    if st.step_in_epoch and st.layout and st.layout != layout:  # the epoch's remaining batches would differ
        raise ConfigError(f"{run_dir} stopped in the middle of an epoch with {_describe(st.layout)}; resume it with "
                          f"the same (now {_describe(layout)})")
    if st.epoch + 1 > t.epochs:
        raise ConfigError(f"{run_dir} has already fine-tuned {st.epoch + 1} epochs; --epochs must be at least that")
    st.layout = layout
    if resume_ck is not None:
        ckpt.restore(vit, optimizer, resume_ck)
        del resume_ck
    net: nn.Module = DDP(vit, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed \
        else vit
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if t.amp and device.type == "cuda"
                else contextlib.nullcontext())
    resumed = st.epoch >= 0 or st.step_in_epoch > 0
    log = RunLog(run_dir, enabled=main, purge_step=st.global_step + 1 if resumed else None)
    if resumed:
        info(f"resuming {run_dir} ({st.epoch + 1} epoch(s) and {st.step_in_epoch} step(s) done)", main)
        log.write("event", {"event": "resume", "epochs_done": st.epoch + 1, "step_in_epoch": st.step_in_epoch,
                            "epochs_from": 1})
    info(f"fine-tuning {s.subject.path} ({sum(p.numel() for p in vit.parameters()) / 1e6:.2f}M parameters) on "
         f"{len(train)} {train.data.name} images, {steps} steps/epoch x {t.epochs} epochs, {env.world_size} "
         f"process(es); lr {base_lr:.3g}; writing {run_dir}", main)

    def save(numbered: bool) -> None:
        """checkpoint-last.pth (and checkpoint-<epoch>.pth) on rank 0; every rank stops if that fails."""
        error = None
        if main:
            state = {"model": vit.state_dict(), "optimizer": optimizer.state_dict(), **st.to_dict(),
                     "config": cfg.to_dict(), "kind": "vit", "source": str(s.subject.path)}
            try:
                ckpt.save_atomic(state, run_dir / "checkpoint-last.pth")
                if numbered:
                    ckpt.save_atomic(state, run_dir / f"checkpoint-{st.epoch + 1}.pth")
            except TrainingError as e:
                error = e
        if not D.all_true(error is None, device):
            raise error or TrainingError("rank 0 could not write a checkpoint (see its error); use --resume auto")

    def stop_requested() -> bool:
        asked = stop.signal is not None
        return not D.all_true(not asked, device) if env.distributed else asked

    # the lr schedule's length (and warm-up) in epochs: a smoke run (finetune.max_steps) gets it compressed
    sched_epochs, sched_warmup = t.epochs, t.warmup_epochs
    if t.max_steps:
        sched_epochs = min(float(t.epochs), t.max_steps / math.ceil(steps / t.accum_iter))
        sched_warmup = t.warmup_epochs * sched_epochs / t.epochs
    reached = bool(t.max_steps) and st.global_step >= t.max_steps

    with StopRequest() as stop:
        for epoch in range(st.epoch + 1, t.epochs):
            if reached:
                break
            start, st.step_in_epoch = st.step_in_epoch, 0
            batches.epoch, batches.start = epoch, start
            net.train()
            bar = progress(steps, initial=start, desc=f"fine-tune {epoch + 1}/{t.epochs}", enabled=main)
            # the loss sum and image count of the steps before a resume come back on rank 0 only
            total = torch.tensor(st.loss_sum if main else 0.0, device=device)
            seen, t0 = (st.seen if main else 0), time.time() - st.time_s
            optimizer.zero_grad(set_to_none=True)
            # device flags since the last check: a non-finite loss (and its value), non-finite gradients (norm)
            bad, bad_loss = torch.zeros((), dtype=torch.bool, device=device), torch.zeros((), device=device)
            bad_grad, bad_norm = torch.zeros_like(bad), torch.zeros_like(bad_loss)
            for step, (x, y) in enumerate(loader, start=start):
                # mixup/cutmix (NumPy) and drop path (torch) draw from generators seeded by the step
                step_seed = derive_seed(cfg.seed, epoch, step, env.rank, 0x5EED)
                torch.manual_seed(step_seed)
                np.random.seed(step_seed % 2**32)
                if step % t.accum_iter == 0:
                    set_lr(optimizer, lr_at(epoch + step / steps, base_lr, t.min_lr, sched_warmup, sched_epochs))
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if mixup is not None:
                    x, y = mixup(x, y)
                last = (step + 1) % t.accum_iter == 0 or step + 1 == steps
                sync = contextlib.nullcontext() if last or not isinstance(net, DDP) else net.no_sync()
                with sync:
                    with autocast:
                        loss = criterion(net(x).float(), y)
                    # on a GPU the check is a device flag read once per logging interval, not a sync per step
                    nonfinite = ~torch.isfinite(loss.detach())
                    bad, bad_loss = bad | nonfinite, torch.where(nonfinite, loss.detach().float(), bad_loss)
                    if device.type == "cpu":  # where a read costs nothing: stop before the backward
                        _check_finite(bad, bad_loss, bad_grad, bad_norm, epoch, step)
                    (loss / t.accum_iter).backward()
                total += loss.detach() * x.shape[0]
                seen += x.shape[0]
                bar.update(1)
                if last:
                    # a finite loss can still give inf gradients; DDP averaged them, so every rank agrees
                    norm = (torch.nn.utils.clip_grad_norm_(vit.parameters(), t.clip_grad) if t.clip_grad
                            else grad_norm(vit.parameters())).detach().float()
                    nonfinite = ~torch.isfinite(norm)
                    bad_grad, bad_norm = bad_grad | nonfinite, torch.where(nonfinite, norm, bad_norm)
                    if device.type == "cpu" or (st.global_step + 1) % t.log_every == 0:
                        _check_finite(bad, bad_loss, bad_grad, bad_norm, epoch, step)
                    step_unless(optimizer, (bad | bad_grad).float())  # never an update from a bad step
                    optimizer.zero_grad(set_to_none=True)
                    st.global_step += 1
                    if st.global_step % t.log_every == 0:
                        rec = {"loss": float(loss.detach()), "lr": optimizer.param_groups[-1]["lr"], "epoch": epoch + 1,
                               "step": st.global_step}
                        log.write("step", rec, step=st.global_step, prefix="finetune")
                    reached = bool(t.max_steps) and st.global_step >= t.max_steps
                    if step + 1 < steps and (reached or stop_requested()):
                        _check_finite(bad, bad_loss, bad_grad, bad_norm, epoch, step)
                        bar.close()
                        sums = D.all_reduce_sum(torch.stack([total.float(), torch.tensor(float(seen), device=device)]))
                        st.step_in_epoch, st.loss_sum, st.seen = step + 1, float(sums[0]), int(sums[1])
                        st.time_s = time.time() - t0
                        save(numbered=False)
                        if not reached:
                            return _stopped(stop, st, run_dir, s, log, main)
                        break
            if reached and st.step_in_epoch:  # train.max_steps reached in the middle of the epoch
                break
            bar.close()
            _check_finite(bad, bad_loss, bad_grad, bad_norm, epoch, steps - 1)
            sums = D.all_reduce_sum(torch.stack([total.float(), torch.tensor(float(seen), device=device)]))
            train_loss = float(sums[0] / sums[1].clamp_min(1))
            rec = {"epoch": epoch + 1, "loss": train_loss, "lr": optimizer.param_groups[-1]["lr"],
                   "time_s": time.time() - t0}
            if (epoch + 1) % max(t.eval_every, 1) == 0 or epoch + 1 == t.epochs:
                rec.update(evaluate_classifier(vit, test, tf_test, t.batch_size, device, env, cfg.data.num_workers))
            st.history.append(rec)
            st.epoch, st.step_in_epoch, st.loss_sum, st.seen, st.time_s = epoch, 0, 0.0, 0, 0.0
            log.write("epoch", rec, step=epoch + 1, prefix="epoch")
            log.flush()
            info(f"fine-tune epoch {epoch + 1}/{t.epochs}: loss {train_loss:.4f}"
                 + (f", test top-1 {rec['test_top1']:.4f}" if "test_top1" in rec else ""), main)
            save(numbered=(epoch + 1) % max(t.save_every, 1) == 0 or epoch + 1 == t.epochs)
            if not reached and epoch + 1 < t.epochs and stop_requested():
                return _stopped(stop, st, run_dir, s, log, main)
    history = st.history
    if reached and st.step_in_epoch:  # a smoke run ends inside an epoch: evaluate there (not an epoch record)
        rec = {"epoch": st.epoch + 2, "steps": st.step_in_epoch, "partial": True,
               "loss": st.loss_sum / max(st.seen, 1), "lr": optimizer.param_groups[-1]["lr"], "time_s": st.time_s,
               **evaluate_classifier(vit, test, tf_test, t.batch_size, device, env, cfg.data.num_workers)}
        history = history + [rec]
        info(f"reached finetune.max_steps={t.max_steps}: loss {rec['loss']:.4f}, test top-1 "
             f"{rec['test_top1']:.4f}", main)
    log.close()
    if main:
        evaluated = [h for h in history if "test_top1" in h]
        if not evaluated:  # only a checkpoint of an older imae, resumed after its last epoch, lacks them
            raise CheckpointError(f"{run_dir} holds no epoch records to report; fine-tune again into another "
                                  f"--output-dir")
        # the headline is the last epoch's; a maximum over epochs scored on the test split would select on
        # it, and no validation split is held out of training here, so no "best" is reported
        last = evaluated[-1]
        results = {"top1": last["test_top1"], "top5": last.get("test_top5"), "epoch": last["epoch"],
                   "final_top1": last["test_top1"], "final_top5": last.get("test_top5"),
                   "epochs": t.epochs, "pool": t.pool, "train_images": len(train), "test_images": len(test),
                   "history": history}
        record = {"checkpoint": s.subject.describe(), "data": s.describe_data(test, train), "config": cfg.to_dict(),
                  "results": results, "timing": {"train_s": sum(h["time_s"] for h in history)}}
        write_result(run_dir, "finetune", record)
        info(f"done: {run_dir}", main)
    return run_dir


def _check_finite(bad: torch.Tensor, bad_loss: torch.Tensor, bad_grad: torch.Tensor, bad_norm: torch.Tensor,
                  epoch: int, step: int) -> None:
    """Stop when a loss or the gradients since the last check were non-finite (device flags; one host read
    when all is well). No update of a bad step was applied (``step_unless``)."""
    if not bool(bad | bad_grad):
        return
    if bool(bad):
        raise TrainingError(f"fine-tuning loss became {float(bad_loss)} at epoch {epoch + 1} "
                            f"step {step + 1}; lower the learning rate (finetune.blr) or set "
                            f"finetune.clip_grad")
    raise TrainingError(f"fine-tuning gradients became non-finite (grad_norm={float(bad_norm):.4g}) at epoch "
                        f"{epoch + 1} step {step + 1}; the update was not applied; lower the learning rate "
                        f"(finetune.blr) or set finetune.clip_grad")


class _State:
    """What a fine-tune checkpoint carries besides weights and optimiser: progress, the finished epochs'
    records, and (stopped mid-epoch) the loss sum, image count and seconds of the epoch's finished steps."""

    def __init__(self, epoch: int = -1, step_in_epoch: int = 0, global_step: int = 0, history=None,
                 loss_sum: float = 0.0, seen: int = 0, time_s: float = 0.0, layout=None) -> None:
        self.epoch, self.step_in_epoch, self.global_step = epoch, step_in_epoch, global_step
        self.history: list[dict[str, float]] = list(history or [])
        self.loss_sum, self.seen, self.time_s = loss_sum, seen, time_s
        self.layout: dict[str, int] | None = layout  # batch size, accumulation and processes of the steps

    @classmethod
    def start(cls, ck: dict[str, Any] | None) -> _State:
        if ck is None:
            return cls()
        partial = ck.get("partial") or {}
        return cls(ck.get("epoch", -1), ck.get("step_in_epoch", 0), ck.get("global_step", 0), ck.get("history"),
                   partial.get("loss_sum", 0.0), partial.get("seen", 0), partial.get("time_s", 0.0),
                   ck.get("layout"))

    def to_dict(self) -> dict[str, Any]:
        """``epoch``: the last finished epoch (-1: none); ``step_in_epoch``: steps done of the next one."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "history": self.history, "layout": self.layout,
                "partial": {"loss_sum": self.loss_sum, "seen": self.seen, "time_s": self.time_s}}


def _describe(layout: dict[str, int]) -> str:
    return (f"finetune.batch_size={layout['batch_size']}, finetune.accum_iter={layout['accum_iter']} on "
            f"{layout['world_size']} process(es)")


def _stopped(stop: StopRequest, st: _State, run_dir: Path, s: Session, log: RunLog, main: bool) -> Path:
    info(f"stopped by {stop.name} after {st.epoch + 1} epoch(s) and {st.step_in_epoch} step(s); checkpoint "
         f"written; continue with: imae finetune {s.subject.path} --resume {run_dir}", main)
    # "epoch": the epoch in progress (1-based, as in step and epoch records), of which step_in_epoch are done
    log.write("event", {"event": "stopped", "signal": stop.name, "epoch": st.epoch + 2,
                        "step_in_epoch": st.step_in_epoch, "epochs_done": st.epoch + 1})
    log.close()
    return run_dir


def _mixing(t, num_classes: int):
    """(mixup function or None, criterion): soft targets with mixup/cutmix, else label-smoothed CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if t.mixup > 0 or t.cutmix > 0:
        return (Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=num_classes), SoftTargetCrossEntropy())
    if t.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=t.label_smoothing)
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate_classifier(vit: nn.Module, test: Split, transform, batch_size: int, device: torch.device,
                        env: D.DistEnv, workers: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy and cross-entropy on the evaluation split; each rank scores a contiguous
    shard and the counts are summed (no padded duplicates)."""
    vit.eval()
    n = len(test)
    lo, hi = n * env.rank // env.world_size, n * (env.rank + 1) // env.world_size
    shard = torch.utils.data.Subset(FinetuneImages(test, transform), range(lo, hi))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=workers,
                                         worker_init_fn=ignore_stop_signals, pin_memory=device.type == "cuda")
    sums = torch.zeros(4, device=device)  # correct@1, correct@5, loss sum, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with eval_precision(device):  # bf16 autocast + TF32 on CUDA, as in training
            logits = vit(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        count = torch.full((), float(y.numel()), device=device)  # not torch.tensor: no blocking copy per batch
        sums += torch.stack([(top[:, 0] == y).sum().float(), (top == y[:, None]).any(1).sum().float(),
                             F.cross_entropy(logits, y, reduction="sum"), count])
    sums = D.all_reduce_sum(sums)
    count = max(float(sums[3]), 1.0)
    out = {"test_top1": float(sums[0]) / count, "test_loss": float(sums[2]) / count}
    if test.num_classes > 5:
        out["test_top5"] = float(sums[1]) / count
    return out
