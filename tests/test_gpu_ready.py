"""The CUDA hot path without a GPU: training steps on fake CUDA tensors, counting host syncs and blocking
copies, and checking that every generator lives on the device of the tensor it fills.

``FakeTensorMode`` runs the real code on tensors that carry a device, shape and dtype but no data. A host
sync is any read of a CUDA tensor's value (``item``, ``float``, ``int``, ``bool``, ``tolist``, ``.cpu()``);
a blocking copy is a cross-device ``to`` / ``copy_`` without ``non_blocking`` or a ``torch.tensor(...,
device=cuda)`` (a pageable host-to-device copy). The autograd engine cannot run on fake CUDA tensors
without a driver, so ``backward`` gives every trainable parameter a fake gradient instead (the backward
graph of these models has no host reads of its own).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from conftest import tiny_config
from imae.data import loader as loader_mod
from imae.data.datasets import ImageSet
from imae.engine import train as train_mod
from imae.engine.logs import RunLog
from imae.engine.loop import Loop, TrainState
from imae.engine.objectives import build_objective
from imae.engine.session import RunSession
from imae.runtime import distributed as D
from imae.runtime.optim import build_adamw

CUDA = torch.device("cuda", 0)


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that reports a CUDA device (a real CUDA generator needs a driver)."""

    def __new__(cls, device):
        return super().__new__(cls)  # the C constructor would take ``device`` and need a driver

    def __init__(self, device) -> None:
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device


def _zeros_list(shape: list[int]):
    return 0.0 if not shape else [_zeros_list(shape[1:]) for _ in range(shape[0])]


def _is_cuda(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cuda"


class Recorder:
    """Patches torch while active; ``events`` lists (kind, what) for syncs, blocking copies, generator faults."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, str]] = []
        mp = monkeypatch
        T = torch.Tensor
        dummies = {"item": lambda t: 0.0, "__float__": lambda t: 0.0, "__int__": lambda t: 0,
                   "__bool__": lambda t: False, "tolist": lambda t: _zeros_list(list(t.shape))}
        for name, dummy in dummies.items():
            for cls in (T, FakeTensor):  # FakeTensor defines its own tolist (an item() per element)
                if name in vars(cls) or cls is T:
                    mp.setattr(cls, name, self._sync(getattr(cls, name), name, dummy))
        real_cpu, real_to, real_copy = T.cpu, T.to, T.copy_

        def cpu(t, *a, **k):
            if _is_cuda(t):
                self.events.append(("sync", "cpu"))
            return real_cpu(t, *a, **k)

        def to(t, *a, **k):
            device, _, non_blocking, _ = torch._C._nn._parse_to(*a, **k)
            if device is not None and torch.device(device).type != t.device.type:
                if t.device.type == "cuda":
                    self.events.append(("sync", "to cpu"))
                elif not non_blocking:
                    self.events.append(("copy", f"blocking to({device})"))
            return real_to(t, *a, **k)

        def copy_(t, src, non_blocking=False):
            if src.device.type != t.device.type and not non_blocking:
                self.events.append(("copy", f"blocking copy_ {src.device.type}->{t.device.type}"))
            return real_copy(t, src, non_blocking)

        mp.setattr(T, "cpu", cpu)
        mp.setattr(T, "to", to)
        mp.setattr(T, "copy_", copy_)
        for name in ("tensor", "as_tensor"):
            real = getattr(torch, name)
            mp.setattr(torch, name, self._factory(real, name))
        for name in ("rand", "randn", "randint", "randperm", "_standard_gamma"):
            mp.setattr(torch, name, self._random(getattr(torch, name), name))

    def _sync(self, real, name, dummy):
        def wrapped(t, *a, **k):
            if isinstance(t, FakeTensor) and t.device.type == "cuda":
                self.events.append(("sync", name))
                return dummy(t)
            return real(t, *a, **k)
        return wrapped

    def _factory(self, real, name):
        def wrapped(*a, **k):
            out = real(*a, **k)
            if k.get("device") is not None and _is_cuda(out):
                self.events.append(("copy", f"torch.{name}(..., device=cuda)"))
            return out
        return wrapped

    def _random(self, real, name):
        def wrapped(*a, **k):
            out = real(*a, **k)
            g = k.get("generator")
            if g is not None and g.device.type != out.device.type:
                self.events.append(("generator", f"torch.{name}: {g.device} generator fills a {out.device} tensor"))
            return out
        return wrapped


class _LabelledSet(ImageSet):
    has_labels = True  # (labels >= 0).all() would be a data-dependent read of a fake tensor


def _fake_step_generator(real):
    def make(seed, epoch, step, rank, device="cpu"):
        g = real(seed, epoch, step, rank, "cpu")
        if torch.device(device).type != "cuda":
            return g
        fake = FakeCudaGenerator(device)
        fake.set_state(g.get_state())
        return fake
    return make


def _fake_backward(params):
    def backward(t, *a, **k):
        for p in params:
            if p.requires_grad:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad + 0
    return backward


def run_fake_cuda_epoch(tmp_path, monkeypatch, method: str, steps: int = 4):
    """Train ``steps`` micro-steps (accumulation 2, a step record every 2nd optimiser step) on fake CUDA
    tensors. Returns ([events of each micro-step], global steps that wrote a record)."""
    sets = {"train.accum_iter": 2, "train.log_every": 2, "train.epochs": 1, "train.batch_size": 8,
            "train.clip_grad": 1.0, "train.compile": False, "train.amp": True}
    if method == "imae":
        sets.update({"imae.distill": False, "imae.branches": "two", "imae.alpha_mode": "beta",
                     "imae.alpha_beta": [2.0, 2.0], "imae.same_class_p": 0.5})
        cfg = tiny_config(tmp_path, "digits-imae", **sets)
    else:
        cfg = tiny_config(tmp_path, "digits-mae", **sets)
    monkeypatch.setattr(loader_mod, "step_generator", _fake_step_generator(loader_mod.step_generator))
    labels = torch.arange(steps * 8) % 4
    env = D.DistEnv(device=CUDA)
    # the epoch's order is drawn on the host once per epoch (not per step), before fake tensors
    plan = loader_mod.BatchPlan(labels, 8, 1, cfg.seed, class_pairs=method == "imae")
    order = plan.rank_order(0, 0)
    monkeypatch.setattr(plan, "rank_order", lambda epoch, rank: order)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            objective = build_objective(cfg)
            model = objective.model
            if method == "imae":  # distillation from a frozen teacher of the same size
                from imae.models.registry import create_model

                teacher = create_model(cfg.model.name.replace("imae_", "mae_"), **_tiny_arch(cfg))
                model.options = dataclasses.replace(model.options, distill=True)
                model.attach_teacher(teacher)
            images = torch.zeros(len(labels), 3, 16, 16, dtype=torch.uint8)
            data = _LabelledSet("fake", "train", labels, ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3, images)
            objective.prepare(data, CUDA)
            optimizer = build_adamw(model, 1e-3, 0.05, (0.9, 0.95), CUDA)
        aug = loader_mod.BatchAugment(16, data.mean, data.std)
        loader = loader_mod.TensorLoader(data, plan, aug, CUDA)
        session = RunSession(env, tmp_path, None, settings=cfg.train, section="train", resume_hint="")
        log = session.log = RunLog(tmp_path, enabled=False)
        loop = Loop(session, objective, model, optimizer, loader, TrainState(), 1e-3)
        monkeypatch.setattr(loop, "_save", lambda *a, **k: None)
        written = []
        monkeypatch.setattr(log, "write", lambda kind, rec, step=None, prefix="": written.append(step)
                            if kind == "step" else None)
        rec = Recorder(monkeypatch)
        monkeypatch.setattr(torch.Tensor, "backward", _fake_backward(list(model.parameters())))
        marks = []
        real_batches = loader.batches

        def marked(epoch, start=0):
            for step, batch in real_batches(epoch, start):
                marks.append(len(rec.events))
                yield step, batch
            marks.append(len(rec.events))

        monkeypatch.setattr(loader, "batches", marked)
        assert loop.run_epoch(0)
        monkeypatch.undo()
    per_step = [rec.events[a:b] for a, b in zip(marks, marks[1:])]
    return per_step, written, rec.events


def _tiny_arch(cfg):
    m = cfg.model
    return {k: getattr(m, k) for k in ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                                      "decoder_num_heads") if getattr(m, k, None) is not None}


@pytest.mark.parametrize("method", ["mae", "imae"])
def test_training_steps_on_cuda_make_no_host_sync_outside_a_logging_step(tmp_path, monkeypatch, method):
    per_step, written, events = run_fake_cuda_epoch(tmp_path, monkeypatch, method)
    assert len(per_step) == 4  # 4 micro-steps = 2 optimiser steps; the 2nd writes a step record
    assert written == [2]
    generator_faults = [e for e in events if e[0] == "generator"]
    assert not generator_faults
    # micro-steps 0-2: nothing; micro-step 3 ends optimiser step 2, the logging step: one read
    assert per_step[:3] == [[], [], []]
    assert len(per_step[3]) <= 1, per_step[3]


def test_feature_extraction_on_cuda_reads_the_device_once_at_the_end(monkeypatch):
    from conftest import tiny_mae
    from imae.config.evaluate import EvalDataConfig
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import extract

    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=5), "eval", 16, progress=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            model = tiny_mae(img_size=16, patch_size=2)
        rec = Recorder(monkeypatch)
        feats = extract(model, split, "fake", batch_size=8, device=CUDA, show_progress=False)
        monkeypatch.undo()
    assert len(split) >= 40 and feats.cls.shape == (len(split), model.arch.embed_dim)  # >= 5 batches
    assert feats.cls.device.type == "cpu"
    # the normalisation statistics once per call (mean, std), one .cpu() per pooling after the last batch
    stats = ("copy", "torch.tensor(..., device=cuda)")
    assert rec.events == [stats, stats, ("sync", "cpu"), ("sync", "cpu")]


@pytest.mark.cuda
def test_on_a_gpu_the_bf16_target_is_the_fp32_target_and_a_training_step_does_not_sync():
    from conftest import tiny_mae
    from imae.data.mixing import AlphaSampler

    m = tiny_mae(norm_pix_loss=True).to(CUDA)
    x = torch.randn(8, 3, 32, 32, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        t = m.target(x)
    assert t.dtype == torch.float32 and torch.equal(t, m.target(x))
    g = torch.Generator(device=CUDA).manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync below raises
    try:
        alpha = AlphaSampler("beta", beta=(2.0, 2.0)).sample(8, g, CUDA)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(x, noise=torch.rand(8, 64, generator=g, device=CUDA))["loss"]
        loss.backward()
        bad = ~torch.isfinite(loss.detach())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert alpha.device.type == "cuda" and not bool(bad)


@pytest.mark.cuda
def test_on_a_gpu_bf16_features_are_close_to_the_cpu_fp32_features():
    from conftest import tiny_mae
    from imae.config.evaluate import EvalDataConfig
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import extract

    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=5), "eval", 16, progress=False)
    model = tiny_mae(img_size=16, patch_size=2)
    cpu = extract(model, split, "cpu", batch_size=16, show_progress=False)
    gpu = extract(model.to(CUDA), split, "gpu", batch_size=16, device=CUDA, show_progress=False)
    assert gpu.cls.device.type == "cpu"
    assert torch.nn.functional.cosine_similarity(gpu.cls, cpu.cls).min() > 0.99



def test_the_frozen_teacher_is_kept_in_bf16_on_cuda_under_amp_and_its_targets_match_fp32():
    from conftest import tiny_config
    from imae.models.registry import create_model

    assert train_mod.teacher_dtype(CUDA, amp=True) == torch.bfloat16
    assert train_mod.teacher_dtype(CUDA, amp=False) == train_mod.teacher_dtype(torch.device("cpu"), True) \
        == torch.float32
    cfg = tiny_config("unused", "digits-imae", **{"imae.distill": False})
    torch.manual_seed(0)
    student = build_objective(cfg).model
    teacher = create_model(cfg.model.name.replace("imae_", "mae_"), **_tiny_arch(cfg))
    student.options = dataclasses.replace(student.options, distill=True)
    student.attach_teacher(teacher)
    train_mod.place_model(student, torch.device("cpu"), amp=True)
    assert {p.dtype for p in student.teacher.parameters()} == {torch.float32}  # only CUDA casts
    x = torch.randn(4, 3, 16, 16)
    noise = torch.rand(4, student.patch_embed.num_patches)
    ref = student.teacher_latents(x, 0.75, noise)
    student.teacher.to(dtype=torch.bfloat16)  # what place_model does on CUDA; autocast as the loop runs it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = student.teacher_latents(x, 0.75, noise)
    assert low.dtype == torch.float32 and {p.dtype for p in student.parameters()} == {torch.float32}  # fp32 targets
    assert torch.allclose(low.float(), ref, atol=0.05 * ref.abs().max().item())
