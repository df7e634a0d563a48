"""The linear probe (MAE's protocol): frozen encoder, BatchNorm without affine + linear head.

``linprobe.mode=cached`` (default, the fast path): clean training features are extracted once (cached)
and the head is fitted on them by L-BFGS (``imae.eval.probe_heads.fit_probe``), its l2 either ``linprobe.l2``
(``l2_rule`` "given") or chosen on a validation share of the training split by the one-standard-error rule
(``l2_rule`` "one_se_on_validation"). That choice can flip between neighbouring grid points from run to run,
so the result also holds ``l2_curve``: the test top-1 at every point of ``linprobe.l2_grid``, each head fitted
on the whole training split (``imae.eval.probe_heads.accuracy_curve``); models are compared at one shared penalty
(``imae compare``), never at their own choices. ``linprobe.mode=full``: MAE's ``main_linprobe.py`` recipe,
RandomResizedCrop + flip images through the frozen encoder at every step, LARS with ``linprobe.weight_decay``
(no l2, no curve), warmup + cosine for ``linprobe.epochs``. Both are scored on the clean evaluation split's
cached features.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from imae.config.evaluate import EvalConfig
from imae.data.loader import build_train_loader
from imae.errors import ConfigError, DataError
from imae.eval.attentive import attentive_at
from imae.eval.depth import by_layer, combine, is_last_only, layers_kw, parse_layers
from imae.eval.eval_split import Split
from imae.eval.features import FeatureCache, encode, eval_precision, extract_split
from imae.eval.probe_heads import HeadFit, accuracy_curve, fit_probe, predict, topk_accuracy, train_head
from imae.eval.subject import Subject

FULL_L2_RULE = "none (LARS with linprobe.weight_decay)"  # linprobe.mode=full's l2_rule


def probe_scores(fit: HeadFit, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
    logits = predict(fit.head, test_x)[:, 0]
    out = {"top1": topk_accuracy(logits, test_y, 1)}
    if logits.shape[-1] > 5:
        out["top5"] = topk_accuracy(logits, test_y, 5)
    return out


def run_linprobe(subject: Subject, train: Split, test: Split, cfg: EvalConfig, *, device: torch.device,
                 cache: FeatureCache | None, show_progress: bool = True) -> dict[str, Any]:
    """Fit the probe on ``train``, score it on ``test``, at each block of ``features.layers`` (one result entry
    per block, :mod:`imae.eval.depth`). Returns ``results`` and ``timing``."""
    if not (train.has_labels and test.has_labels):
        raise DataError(f"a linear probe needs class labels; {test.data.name} has none")
    pool, p = cfg.features.pool, cfg.linprobe
    depth = subject.model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    if p.mode == "full" and cfg.probe.head == "attentive":
        raise ConfigError("the attentive probe trains on cached tokens; use it with the cached mode (the default)")
    if p.mode == "full" and not is_last_only(layers, depth):
        raise ConfigError("linprobe.mode=full probes the encoder's output only; measure other blocks with the cached "
                          "probe (the default mode)")
    kw = dict(device=device, cache=cache, show_progress=show_progress, **layers_kw(layers, depth))
    fte = by_layer(extract_split(subject, test, cfg, which="evaluation", **kw), layers)
    extract_s = sum(f.seconds for f in fte.values())
    if p.mode == "full":
        fit = train_full(subject, train, cfg, device=device, show_progress=show_progress)
        results = {"mode": p.mode, "pool": pool, **probe_scores(fit, fte[depth].pooled(pool), test.labels),
                   "l2_rule": FULL_L2_RULE,  # no l2 and no curve
                   "final_loss": fit.epoch_loss[-1] if fit.epoch_loss else None,
                   "train_images": len(train), "test_images": len(test), "num_classes": train.num_classes}
        return {"results": results, "timing": {"extract_s": extract_s, "fit_s": fit.seconds}}
    ftr = by_layer(extract_split(subject, train, cfg, which="training", **kw), layers)
    extract_s += sum(f.seconds for f in ftr.values())
    fit_s = 0.0

    def at(k: int) -> dict[str, Any]:
        nonlocal fit_s
        # l2 is chosen on a validation share of the training features; the test split is only scored
        xtr, xte = ftr[k].pooled(pool), fte[k].pooled(pool)
        fit, penalty = fit_probe(xtr, train.labels, train.num_classes, p, seed=cfg.seed, device=device)
        t0 = time.perf_counter()
        # the test top-1 at every l2 of the grid, so that the result shows what hangs on the choice
        penalty["l2_curve"] = accuracy_curve(xtr, train.labels, xte, test.labels, train.num_classes, p,
                                             seed=cfg.seed, device=device)
        fit_s += fit.seconds + time.perf_counter() - t0
        out = {"mode": p.mode, "pool": pool, **probe_scores(fit, xte, test.labels), **penalty,
               "final_loss": fit.epoch_loss[-1] if fit.epoch_loss else None,
               "train_images": len(train), "test_images": len(test), "num_classes": train.num_classes}
        if cfg.probe.head == "attentive":  # beside the linear probe, on the same block's tokens
            out["attentive"] = attentive_at(subject, train, test, cfg, k, device=device, cache=cache,
                                            show_progress=show_progress)[0]
            fit_s += out["attentive"]["fit_s"]
        return out

    results = combine({k: at(k) for k in layers}, depth)
    return {"results": results, "timing": {"extract_s": extract_s, "fit_s": fit_s}}


def train_full(subject: Subject, train: Split, cfg: EvalConfig, *, device: torch.device,
               show_progress: bool = True) -> HeadFit:
    """MAE's augmented protocol: every step encodes a fresh RandomResizedCrop + flip batch."""
    p, pool = cfg.linprobe, cfg.features.pool
    batch = min(p.batch_size, len(train))
    chunk = cfg.features.batch_size
    # file-based sets: the loader serves micro-batches (at most one extraction chunk) that are gathered to
    # the probe's batch, so that its workers hold a bounded amount of memory whatever the batch size (at
    # 16,384 images of 224 px a batch is 2.5 GB, times 4 workers x prefetch 4). Each image's crop is seeded
    # by the image itself, and a micro-batch plan is a prefix-compatible split of the same order, so the
    # batches are the ones a whole-batch loader would give. In-memory sets keep whole batches.
    micro = batch if train.data.images is not None else _largest_divisor(batch, chunk)
    group = batch // micro
    loader = build_train_loader(train.data, micro, train.size, device, seed=cfg.seed, scale=p.crop_scale,
                                num_workers=cfg.data.num_workers)
    steps = len(loader) // group
    model = subject.model.to(device).eval()

    def epoch_batches(epoch: int):
        parts, labels = [], []
        for step, b in loader.batches(epoch):
            if step >= steps * group:
                break
            with torch.inference_mode(), eval_precision(device):
                parts += [encode(model, b.images[i:i + chunk])[0 if pool == "cls" else 1].float()
                          for i in range(0, b.images.shape[0], chunk)]
            labels.append(b.labels)
            if len(labels) == group:
                yield torch.cat(parts).clone(), torch.cat(labels).view(-1, 1)
                parts, labels = [], []

    return train_head(epoch_batches, steps, model.arch.embed_dim, train.num_classes, 1, p, batch_size=batch,
                      seed=cfg.seed, device=device, show_progress=show_progress, desc="linear probe (full)")


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap``."""
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)
