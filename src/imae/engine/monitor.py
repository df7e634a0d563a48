"""Watch a pre-training run learn (``train.monitor_every N``): frozen-feature measures every N epochs.

At the end of every N-th epoch, on rank 0 only, the model being trained is measured frozen (eval mode,
no gradients) on fixed subsets (the first images of each class, no random draw):

- ``monitor_knn_top1``: weighted kNN top-1 (k = 20, cosine, T = 0.07) of the cls features of
  ``MONITOR_EVAL_PER_CLASS`` evaluation images per class against a bank of ``MONITOR_TRAIN_PER_CLASS`` training
  images per class;
- ``monitor_nmi``: the NMI between k-means clusters (k = classes, 3 restarts, seed 0) of those evaluation
  features and the labels;
- for an i-MAE, ``monitor_gain_sub_vs_teacher``: the un-mixing gain of the subordinate at alpha = 0.3 (the
  separability scheme at the training mask ratio, :mod:`imae.eval.separability`), **scored against its own
  teacher** (not a referee: a number to watch, not to report), on the disjoint pairs of
  ``MONITOR_PAIR_IMAGES`` evaluation images.

The numbers join the epoch's record (``log.jsonl`` and TensorBoard ``epoch/monitor_*``; the report's training
charts draw them). The monitor draws no number from any generator training uses (every random state it might
touch is forked and restored: the final weights with and without it are bit-identical, tested) and a failure
(out of memory, a bad subset) is one warning line and a ``monitor_failed`` event; training goes on. The other
ranks do not take part: they wait at the epoch's checkpoint for as long as rank 0 measures.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from imae.console import info

MONITOR_TRAIN_PER_CLASS = 100  # the kNN bank: 1,000 images of a ten-class set
MONITOR_EVAL_PER_CLASS = 200  # queries and k-means: 2,000 images of a ten-class set
MONITOR_PAIR_IMAGES = 400  # the i-MAE's un-mixing gain: 200 disjoint pairs (80 fit, 40 validation, 80 test)
KEYS = ("monitor_knn_top1", "monitor_nmi", "monitor_gain_sub_vs_teacher")


class TrainingMonitor:
    """Called by the training loop at the end of every epoch with that epoch's record (``metrics``), to which it
    adds its numbers every ``every`` epochs."""

    def __init__(self, cfg, model: torch.nn.Module, device: torch.device, is_main: bool, log=None) -> None:
        self.every = int(cfg.train.monitor_every)
        self.cfg, self.model, self.device, self.is_main, self.log = cfg, model, device, is_main, log
        self._splits = None

    def due(self, epoch: int) -> bool:
        """Whether the 0-based ``epoch`` is measured."""
        return self.every > 0 and self.is_main and (epoch + 1) % self.every == 0

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.due(epoch):
            return
        t0 = time.perf_counter()
        was_training = self.model.training
        try:
            with _forked_rng(self.device):
                out = self.measure()
        except Exception as e:  # noqa: BLE001 - a monitor failure never stops training
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            info(f"warning: the training monitor failed at epoch {epoch + 1} ({reason[:200]}); training goes on")
            if self.log is not None:
                self.log.write("event", {"event": "monitor_failed", "epoch": epoch + 1, "error": reason[:500]})
            return
        finally:
            self.model.train(was_training)
        metrics.update(out)
        metrics["monitor_s"] = time.perf_counter() - t0

    def splits(self):
        """The fixed subsets (read once): the kNN bank from the training split, the queries from the evaluation
        split, at the model's image size."""
        if self._splits is None:
            from imae.config.evaluate import EvalDataConfig
            from imae.eval.eval_split import load_eval_split

            d = self.cfg.data
            data = EvalDataConfig(dataset=d.dataset, path=d.path, img_size=d.img_size, cache_dir=d.cache_dir,
                                  train_per_class=MONITOR_TRAIN_PER_CLASS, eval_per_class=MONITOR_EVAL_PER_CLASS,
                                  num_workers=0)
            size = self.model.arch.img_size
            self._splits = (load_eval_split(data, "train", size, progress=False),
                            load_eval_split(data, "eval", size, progress=False))
        return self._splits

    def measure(self) -> dict[str, float]:
        from imae.eval.features import extract
        from imae.eval.knn import knn_accuracy
        from imae.eval.semantics import kmeans_nmi

        bank, queries = self.splits()
        model = self.model.eval()
        kw = dict(batch_size=256, device=self.device, cache=None, show_progress=False)
        ftr, fte = extract(model, bank, "monitor", **kw), extract(model, queries, "monitor", **kw)
        out = {"monitor_knn_top1": knn_accuracy(ftr.cls, bank.labels, fte.cls, queries.labels, bank.num_classes, 20,
                                                0.07)["top1"],
               "monitor_nmi": kmeans_nmi(fte.cls, queries.labels, queries.num_classes, restarts=3, seed=0)}
        teacher = getattr(model, "teacher", None)
        if getattr(model, "kind", "mae") == "imae" and teacher is not None:
            out["monitor_gain_sub_vs_teacher"] = self.gain_against(teacher, queries)
        return out

    def gain_against(self, teacher, split) -> float:
        """The un-mixing gain of the subordinate at alpha 0.3 against the teacher, on a small pair set."""
        from imae.config.evaluate import EvalConfig
        from imae.eval.pairs import make_pairs
        from imae.eval.separability import measure
        from imae.eval.subject import Subject

        cfg = EvalConfig()
        s = cfg.separability
        s.alphas, s.mask_ratio, s.baselines, s.classify, s.bootstrap = [0.3], self.cfg.train.mask_ratio, [], False, 10
        cfg.validate()
        pairs = make_pairs(split.labels, s.fractions, "random", 0, MONITOR_PAIR_IMAGES)

        def subject(model, label):
            sub = Subject(path=Path(label), run_dir=None, model=model, train_config=None, fingerprint=label,
                          label=label, source=Path(label))
            sub.identity = lambda evaluated: {"label": label, "role": "teacher"}
            return sub

        from imae.eval.features import eval_precision

        with eval_precision(self.device):  # a teacher kept in bf16 on CUDA
            m = measure(subject(self.model, "monitored"), subject(teacher, "teacher"), split, pairs, cfg,
                        device=self.device, show_progress=False)
        return float(m.result.gain("sub", "0.3")["gain"])


@contextlib.contextmanager
def _forked_rng(device: torch.device):
    """Every global random state the measures might touch (torch CPU and CUDA, Python, NumPy), restored after."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
