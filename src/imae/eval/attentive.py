"""The attentive probe (``probe.head=attentive``, ``imae linprobe --head attentive``): learned queries attend over
the frozen encoder's tokens (cls and every patch token), then a linear classifier.

Head (the efficient form of a cross-attention pooling head, arXiv 2506.10178: no key, value or output
projections): each of Q learned queries q_j [D] weights the tokens t [N, T, D] by
``softmax_T(LN(t) . q_j / sqrt(D))`` (LN: LayerNorm without affine) and pools them; the Q pooled vectors
[N, Q * D] go through MAE's linear-probe head (BatchNorm without affine, then linear). The queries start at
zero, i.e. at the mean of the tokens.

It trains on cached tokens (:func:`extract_tokens`, float16 on disk and in memory) in two stages: the queries
by AdamW with a cosine schedule for ``probe.epochs`` over batches of ``probe.batch_size`` (seeded), then, on
the pooled features, MAE's linear-probe head by L-BFGS as the cached linear probe fits it. The features are
the cls token beside the pooled vectors, so the probe holds the cls linear probe as a special case.

Hyper-parameters (the queries' learning rate and weight decay over ``probe.lr_grid`` x
``probe.weight_decay_grid``, the head's l2 over ``linprobe.l2_grid``) are chosen on the linear probe's seeded,
stratified validation share (``linprobe.l2_val_fraction``) of the *training* split: best validation top-1
(ties: the first), the l2 by the linear probe's one-standard-error rule, each penalty's head fitted on its own
as the final head is (``solo``, :func:`imae.eval.probe_heads.fit_grid`). The queries are always those trained
on the fit share (the chosen setting's are kept; a given or shared setting trains them there too, so every
command fits a model the same way); the head is then refitted on every training row at the chosen l2; the
evaluation split is only scored. ``probe.lr`` and ``probe.weight_decay`` both set skip the search (rule
"given"; l2: ``linprobe.l2``, else the fixed default); ``imae compare`` gives both models one setting, chosen
on the referee's training tokens before either model is looked at.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from imae.checksum import tensor_checksum
from imae.console import info, progress
from imae.data.augment import Normalize
from imae.errors import ConfigError
from imae.eval.eval_split import Split, digest
from imae.eval.features import FEATURE_VERSION, FeatureCache, eval_precision
from imae.eval.probe_heads import DEFAULT_L2, fit_probe, predict, select_l2, topk_accuracy, validation_split

LN_EPS = 1e-5  # F.layer_norm's default
GIVEN = "given"
CHOSEN = "best_top1_on_validation"
SHARED = "shared: best_top1_on_validation of the reference's training tokens"


class AttentivePool(nn.Module):
    """tokens [N, T, D] (cls first) -> [N, D + Q * D]: the cls token beside Q attention-pooled vectors of all
    tokens; trained with a BatchNorm (no affine) + linear classifier on top (``classifier``)."""

    def __init__(self, dim: int, num_classes: int, queries: int = 1) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(queries, dim))
        self.classifier = nn.Sequential(nn.BatchNorm1d((1 + queries) * dim, affine=False, eps=1e-6),
                                        nn.Linear((1 + queries) * dim, num_classes))
        nn.init.trunc_normal_(self.classifier[1].weight, std=0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def attention(self, tokens: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [N, T, D] (and their :func:`token_stats` [N, T, 2], computed here when not given) -> weights
        [N, Q, T] (each row sums to 1).

        LN(t) . q = (t . q - mean(t) sum(q)) * rstd(t): the logits of normalising the tokens first, without
        writing (and differentiating through) a normalised copy of them; with the statistics computed once per
        fit, a training step reads the tokens a few times instead of a few dozen (the queries' training is
        bound by reading them)."""
        t = tokens.float()
        stats = token_stats(t) if stats is None else stats.float()
        logits = (t @ self.queries.T - stats[..., :1] * self.queries.sum(-1)) * stats[..., 1:]
        return torch.softmax(logits / math.sqrt(t.shape[-1]), dim=1).transpose(1, 2)

    def pooled(self, tokens: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [N, T, D] -> [N, D + Q * D]: the cls token beside the Q pooled vectors."""
        t = tokens.float()
        return torch.cat([t[:, 0], (self.attention(t, stats) @ t).flatten(1)], dim=1)

    def forward(self, tokens: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.pooled(tokens, stats))


@torch.no_grad()
def token_stats(tokens: torch.Tensor, batch_size: int = 1024, device: torch.device | str | None = None) -> torch.Tensor:
    """tokens [N, T, D] -> [N, T, 2] float32 on ``device`` (default: the tokens'): each token's mean and
    1 / sqrt(var + eps) over D, as F.layer_norm computes them (computed there, in chunks of ``batch_size``)."""
    device = tokens.device if device is None else torch.device(device)
    parts = []
    for i in range(0, tokens.shape[0], batch_size):
        t = tokens[i:i + batch_size].to(device).float()
        _, mean, rstd = torch.native_layer_norm(t, t.shape[-1:], None, None, LN_EPS)
        parts.append(torch.cat([mean, rstd], dim=-1))
    return torch.cat(parts) if parts else torch.zeros(*tokens.shape[:2], 2, device=device)


@dataclass
class AttentiveFit:
    pool: AttentivePool  # the learned queries (stage 1)
    head: Any  # imae.eval.probe_heads.HeadFit: the linear probe on the pooled features (stage 2)
    l2: float
    seconds: float


def train_queries(x: torch.Tensor, y: torch.Tensor, num_classes: int, p, *, lr: float, weight_decay: float,
                  seed: int = 0, device: torch.device | str = "cpu") -> AttentivePool:
    """Stage 1: the queries (and a throw-away classifier) by AdamW with a cosine schedule, on tokens x [N, T, D]
    (any float dtype), labels y [N]; ``p``: the ``probe`` configuration."""
    return train_queries_many(x, y, num_classes, p, [(lr, weight_decay)], seed=seed, device=device)[0]


def train_queries_many(x: torch.Tensor, y: torch.Tensor, num_classes: int, p, settings: list[tuple[float, float]], *,
                       seed: int = 0, device: torch.device | str = "cpu",
                       stats: torch.Tensor | None = None) -> list[AttentivePool]:
    """:func:`train_queries` for each (lr, weight decay) of ``settings``, side by side: every setting starts from
    the same seeded queries and sees the same seeded batches, so each result is bit for bit the one trained
    alone; each batch is gathered (and its token statistics read) once for all of them. ``stats``: x's
    :func:`token_stats`, when the caller has them."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    pools, opts = [], []
    for lr, weight_decay in settings:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pools.append(AttentivePool(x.shape[-1], num_classes, p.queries).to(device))
        opts.append(torch.optim.AdamW(pools[-1].parameters(), lr=lr, weight_decay=weight_decay))
    # once per fit: the steps read them by row
    stats = token_stats(x, device=device) if stats is None else stats.to(device)
    n, batch = x.shape[0], min(p.batch_size, x.shape[0])
    steps, step = p.epochs * math.ceil(n / batch), 0
    for _epoch in range(p.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            rows = order[i:i + batch]
            if rows.numel() < 2:  # BatchNorm needs two rows
                continue
            xb, sb, yb = x[rows].to(device), stats[rows], y[rows].to(device)
            for pool, opt, (lr, _) in zip(pools, opts, settings):
                for group in opt.param_groups:  # cosine from lr to 0
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(pool(xb, sb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step += 1
    return [pool.eval().requires_grad_(False) for pool in pools]


@torch.no_grad()
def pool_tokens(pool: AttentivePool, x: torch.Tensor, batch_size: int = 1024,
                stats: torch.Tensor | None = None) -> torch.Tensor:
    """tokens x [N, T, D] -> pooled features [N, (1 + Q) * D] (float32, CPU); ``stats``: x's :func:`token_stats`
    when the caller has them (else computed batch by batch)."""
    device = pool.queries.device
    parts = [pool.pooled(x[i:i + batch_size].to(device),
                         None if stats is None else stats[i:i + batch_size].to(device)).cpu()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, pool.classifier[1].in_features)


def fit_attentive(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg, *, lr: float, weight_decay: float,
                  l2: float, seed: int = 0, device: torch.device | str = "cpu",
                  kept: tuple[AttentivePool, torch.Tensor] | None = None) -> AttentiveFit:
    """Both stages on tokens x [N, T, D]: the queries (:func:`train_queries`) on the fit share of the linear
    probe's seeded split (:func:`imae.eval.probe_heads.validation_split`), then the linear probe (MAE's head,
    L-BFGS, penalty ``l2``) on the pooled features of every row. ``kept``: (queries, x pooled by them) already
    computed with this setting on these tokens, as :func:`choose_setting` leaves them. ``cfg``: the evaluation
    configuration."""
    t0 = time.perf_counter()
    if kept is None:
        fit_idx, _ = validation_split(y, cfg.linprobe.l2_val_fraction, seed)
        queries = train_queries(x[fit_idx], y[fit_idx], num_classes, cfg.probe, lr=lr, weight_decay=weight_decay,
                                seed=seed, device=device)
        kept = (queries, pool_tokens(queries, x))
    queries, pooled = kept
    head, _ = fit_probe(pooled, y, num_classes, cfg.linprobe, seed=seed, device=device, l2=l2, rule="attentive")
    return AttentiveFit(queries, head, l2, time.perf_counter() - t0)


def predict_attentive(fit: AttentiveFit, x: torch.Tensor) -> torch.Tensor:
    """tokens x [M, T, D] -> logits [M, C]."""
    return predict(fit.head.head, pool_tokens(fit.pool, x))[:, 0]


def choose_setting(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg, *, seed: int = 0,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """The learning rate, weight decay (of the queries) and l2 (of the linear head) of the best validation top-1,
    on a seeded validation split of the training tokens x [N, T, D] (``linprobe.l2_val_fraction``, the linear
    probe's split): for each (lr, weight decay), queries trained on the fit part, then the linear head's l2
    chosen on the validation part by the linear probe's rule. Returns {"lr", "weight_decay", "l2", "rule",
    "selection": {"val_images", "grid": [{"lr", "weight_decay", "l2", "val_top1"}]}, "fit_index",
    "val_index", "kept"} (the last three are not written: training-split rows, for checks, and the chosen
    setting's queries with every training row pooled by them, which :func:`fit_attentive` keeps)."""
    p = cfg.probe
    fit_idx, val_idx = validation_split(y, cfg.linprobe.l2_val_fraction, seed)
    if val_idx.numel() == 0 or fit_idx.numel() < 2:
        raise ConfigError(f"{y.shape[0]} training images are too few to choose the attentive probe's setting on a "
                          f"validation share of {cfg.linprobe.l2_val_fraction:g}; set probe.lr=VALUE and "
                          f"probe.weight_decay=VALUE")
    settings = [(float(lr), float(wd)) for lr in p.lr_grid for wd in p.weight_decay_grid]
    stats = token_stats(x)  # once for the queries' training and every setting's pooling
    pools = train_queries_many(x[fit_idx], y[fit_idx], num_classes, p, settings, seed=seed, device=device,
                               stats=stats[fit_idx])
    grid, best = [], None
    for (lr, wd), pool in zip(settings, pools):
        feats = pool_tokens(pool, x, stats=stats)  # every training row, pooled by queries trained on the fit part alone
        # the same split; each penalty's head fitted on its own, as the refit (fit_attentive) fits it
        sel = select_l2(feats, y, num_classes, cfg.linprobe, seed=seed, device=device, solo=True)
        grid.append({"lr": lr, "weight_decay": wd, "l2": sel["l2"], "val_top1": sel["best_val_top1"]})
        if best is None or grid[-1]["val_top1"] > best["val_top1"]:
            best, kept = grid[-1], (pool, feats)
    return {"lr": best["lr"], "weight_decay": best["weight_decay"], "l2": best["l2"], "rule": CHOSEN,
            "selection": {"val_images": int(val_idx.numel()), "grid": grid}, "fit_index": fit_idx,
            "val_index": val_idx, "kept": kept}


def setting_of(cfg, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, seed: int, device) -> dict[str, Any]:
    """``probe.lr`` / ``probe.weight_decay`` (and ``linprobe.l2``, else the default penalty) when given, else
    :func:`choose_setting` on these tokens."""
    p = cfg.probe
    if p.lr is not None and p.weight_decay is not None:
        l2 = cfg.linprobe.l2 if cfg.linprobe.l2 is not None else DEFAULT_L2
        return {"lr": float(p.lr), "weight_decay": float(p.weight_decay), "l2": float(l2), "rule": GIVEN}
    return choose_setting(x, y, num_classes, cfg, seed=seed, device=device)


def attentive_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, num_classes: int,
                    cfg, *, device, setting: dict[str, Any] | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Choose the setting on the training tokens (unless ``setting`` is given: a shared one), keep (or train) its
    queries on the fit share, refit the head on every training row, score the evaluation tokens. Returns the
    result entry and the per-image hits [M] bool."""
    p = cfg.probe
    t0 = time.perf_counter()
    kept = None
    if setting is None:
        setting = setting_of(cfg, xtr, ytr, num_classes, seed=cfg.seed, device=device)
        kept = setting.get("kept")  # chosen here: its queries were trained on these tokens' fit share
    fit = fit_attentive(xtr, ytr, num_classes, cfg, lr=setting["lr"], weight_decay=setting["weight_decay"],
                        l2=setting["l2"], seed=cfg.seed, device=device, kept=kept)
    logits = predict_attentive(fit, xte)
    entry: dict[str, Any] = {"head": "attentive", "queries": p.queries, "epochs": p.epochs,
                             "top1": topk_accuracy(logits, yte, 1)}
    if logits.shape[-1] > 5:
        entry["top5"] = topk_accuracy(logits, yte, 5)
    entry.update({k: v for k, v in setting.items() if k not in ("fit_index", "val_index", "kept")})
    entry["fit_s"] = time.perf_counter() - t0
    return entry, logits.argmax(-1) == yte


# -- cached tokens ----------------------------------------------------------------------------------------------
def extract_tokens(model, split: Split, fingerprint: str, *, layer: int, batch_size: int = 256,
                   device: torch.device | str = "cpu", cache: FeatureCache | None = None,
                   show_progress: bool = True, desc: str = "tokens") -> torch.Tensor:
    """Every token (cls first, then the patches) of every clean image of ``split`` at block ``layer`` (its
    output with the final norm applied; ``depth``: the encoder's output): float16 [N, 1+L, D], cached beside
    the pooled features."""
    device = torch.device(device)
    key = {"version": FEATURE_VERSION, "checkpoint": fingerprint, "split": split.key, "inputs": "clean",
           "tokens": "float16", "layer": layer}
    if device.type == "cuda":
        key["precision"] = "bf16"
    file = cache.folder / f"tokens-{digest(key)}.pt" if cache is not None and cache.enabled else None
    if file is not None and file.is_file():
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
            if obj.get("key") == digest(key) and obj.get("sha1") == tensor_checksum(obj.get("tokens")):
                return obj["tokens"]
        except Exception:  # a damaged entry is recomputed
            pass
    was_training = model.training
    model.eval()
    parts = []
    norm = Normalize(split.data.mean, split.data.std)
    index = torch.arange(len(split)).view(-1, 1)
    bar = progress(len(split), desc=desc, enabled=show_progress)
    with torch.inference_mode(), eval_precision(device):
        for u8 in split.batches(index, batch_size):
            x = norm(u8[:, 0].to(device, non_blocking=True))
            parts.append(model.encode_layers(model.embed_patches(x), [layer])[layer].to(torch.float16).cpu())
            bar.update(u8.shape[0])
    bar.close()
    model.train(was_training)
    tokens = torch.cat(parts)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
            torch.save({"key": digest(key), "tokens": tokens, "sha1": tensor_checksum(tokens)}, tmp)
            os.replace(tmp, file)
        except (OSError, RuntimeError) as e:
            info(f"warning: cannot write the token cache in {Path(file).parent} ({e}); going on without it")
    return tokens


def attentive_at(subject, train: Split, test: Split, cfg, layer: int, *, device, cache: FeatureCache | None,
                 show_progress: bool = True,
                 setting: dict[str, Any] | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """The attentive probe of ``subject`` at block ``layer``: the result entry (with ``extract_s``, the token
    passes not served by the cache) and the per-test-image hits."""
    t0 = time.perf_counter()
    kw = dict(layer=layer, batch_size=cfg.features.batch_size, device=device, cache=cache,
              show_progress=show_progress)
    xtr = extract_tokens(subject.model, train, subject.fingerprint, desc="tokens (training split)", **kw)
    xte = extract_tokens(subject.model, test, subject.fingerprint, desc="tokens (evaluation split)", **kw)
    extract_s = time.perf_counter() - t0
    entry, hits = attentive_probe(xtr, train.labels, xte, test.labels, train.num_classes, cfg, device=device,
                                  setting=setting)
    return {**entry, "extract_s": extract_s}, hits
