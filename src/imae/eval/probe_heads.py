"""Linear classifiers on frozen features: MAE's probe head (BatchNorm without affine + linear).

Two ways to train it:
- :func:`fit_cached` (the fast path): full-batch L-BFGS to convergence on cached features, loss
  cross-entropy + l2/2 |W|^2. With the whole set as one batch, BatchNorm's statistics are exactly the
  training set's mean and variance, i.e. the head is multinomial logistic regression on standardised
  features. Deterministic; seconds for CIFAR-10.
- :func:`train_head`: MAE's ``main_linprobe.py`` schedule (LARS, linear warmup, half-cycle cosine) over
  batches the caller supplies (augmented images through the encoder: ``linprobe.mode=full``).

The cached probe's L2 penalty, and the rule that chose it (``l2_rule`` in every record :func:`fit_probe` returns):
- ``"given"``: ``linprobe.l2`` set by the user;
- ``"one_se_on_validation"``: ``linprobe.l2`` unset, chosen by :func:`select_l2` (one-standard-error rule on a
  validation share of the training features, never the test split), then refitted on all of them;
- the caller's own rule string when the caller passes ``l2`` (a penalty fixed before looking at the models,
  e.g. one shared by all models of a comparison). The one-SE choice can flip between neighbouring grid
  points from run to run, so models are compared at ONE penalty, never each at its own choice.
:func:`accuracy_curve` / :func:`curve_hits` give the test top-1 (per-item hits) at every point of
``linprobe.l2_grid``, each head fitted on the whole training split, so that a result shows how much hangs
on the penalty. :func:`fit_grid` is the one fit over a grid that the search and the curve share (batched;
``solo=True``: each head alone, as the attentive probe's search fits them).

The head can predict K labels at once (``outputs=K``: K softmaxes over the same classes); the separability
scheme predicts the subordinate's and the dominant's class of a mixture with one head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from imae.config.evaluate import LinearProbeConfig
from imae.console import progress
from imae.errors import ConfigError
from imae.eval.lars import LARS
from imae.eval.threads import threads_for
from imae.runtime.distributed import launched_rank_is_zero
from imae.runtime.optim import lr_at, set_lr

ROW_CHUNK_ELEMENTS = 2**24  # fit_cached_many: logits per chunk of rows (64 MB of float32)
# fit_cached_many shows a progress bar when one loss evaluation multiplies more than this many numbers (about a
# second or more on a CPU: 2,000 classes of ImageNet features, not CIFAR-10's 10)
PROGRESS_MULTIPLIES = 2**31


class LinearHead(nn.Module):
    """features [N, D] -> logits [N, K, C]: BatchNorm1d(affine=False) then one linear map."""

    def __init__(self, dim: int, num_classes: int, outputs: int = 1) -> None:
        super().__init__()
        self.num_classes, self.outputs = num_classes, outputs
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes * outputs)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # as MAE's probe
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x)).view(x.shape[0], self.outputs, self.num_classes)


@dataclass
class HeadFit:
    head: LinearHead
    epoch_loss: list[float]  # mean training loss of each epoch (fit_cached: the final loss)
    seconds: float


def head_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits [N, K, C], y [N, K] -> the sum over the K outputs of the mean cross-entropy."""
    return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="mean") * y.shape[1]


def train_head(epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]], steps_per_epoch: int,
               dim: int, num_classes: int, outputs: int, cfg: LinearProbeConfig, *, batch_size: int, seed: int = 0,
               device: torch.device | str = "cpu", show_progress: bool = True, desc: str = "linear probe") -> HeadFit:
    """Train a head on ``epoch_batches(epoch)`` -> (features [B, D], labels [B, K]) for ``cfg.epochs`` epochs,
    LARS at lr = blr * batch_size / 256 with warmup and half-cycle cosine."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    head = LinearHead(dim, num_classes, outputs).to(device)
    lr = cfg.blr * batch_size / 256
    opt = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    losses = []
    bar = progress(cfg.epochs * steps_per_epoch, desc=desc, enabled=show_progress)
    for epoch in range(cfg.epochs):
        head.train()
        total, n = torch.zeros((), device=device), 0
        for step, (x, y) in enumerate(epoch_batches(epoch)):
            set_lr(opt, lr_at(epoch + step / steps_per_epoch, lr, 0.0, cfg.warmup_epochs, cfg.epochs))
            loss = head_loss(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * x.shape[0]
            n += x.shape[0]
            bar.update(1)
        losses.append(float(total) / max(n, 1))
    bar.close()
    head.eval()
    return HeadFit(head, losses, time.perf_counter() - t0)


# the penalty of a head fitted without a chosen one (cfg.l2 None and no l2 argument): the fixed value
# this project used before l2 was chosen on validation; the separability classification heads use it
DEFAULT_L2 = 1e-4
BATCHED_ELEMENTS = 2**26  # the l2 search fits the whole grid as one batched problem up to this many floats


def fit_cached(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig, *, seed: int = 0,
               device: torch.device | str = "cpu", l2: float | None = None) -> HeadFit:
    """Fit a head to cached features x [N, D] with labels y [N] or [N, K] by full-batch L-BFGS."""
    return fit_cached_many([x], y, num_classes, cfg, seed=seed, device=device, l2=l2)[0]


def fit_cached_many(xs: list[torch.Tensor], y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig, *,
                    seed: int = 0, device: torch.device | str = "cpu",
                    l2: float | Sequence[float] | None = None) -> list[HeadFit]:
    """One head per feature set x_a [N, D] (same labels y [N] or [N, K]), fitted jointly by full-batch L-BFGS.

    BatchNorm's statistics are each set's own (what it computes on a full batch); each linear map then
    minimises mean cross-entropy (summed over the K outputs) + l2_a/2 |W|^2. The problems are independent,
    so the joint minimum is each one's minimum; solving them as one batched problem, with hand-written
    gradients, pays L-BFGS's per-iteration overhead (what costs on small sets) once instead of A times.

    ``l2``: one penalty for all heads or one per head; None: ``cfg.l2``, or :data:`DEFAULT_L2` when that is
    None too (no search happens here; :func:`fit_probe` searches).
    """
    t0 = time.perf_counter()
    if l2 is None:
        l2 = cfg.l2 if cfg.l2 is not None else DEFAULT_L2
    l2s = [float(v) for v in l2] if isinstance(l2, Sequence) else [float(l2)] * len(xs)
    if len(l2s) != len(xs):
        raise ValueError(f"{len(l2s)} penalties for {len(xs)} feature sets")
    x = torch.stack([xi.float() for xi in xs]).to(device)  # [A, N, D]
    y = (y.view(-1, 1) if y.ndim == 1 else y).to(device)
    a, n, d = x.shape
    k = y.shape[1]
    if n < 2:
        raise ValueError("a linear probe needs at least two training samples")
    torch.manual_seed(seed)
    heads = [LinearHead(d, num_classes, k).to(device) for _ in range(a)]
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    eps = heads[0].bn.eps
    for i, h in enumerate(heads):  # eval mode then standardises exactly as training did
        h.bn.running_mean.copy_(mean[i, 0])
        h.bn.running_var.copy_(var[i, 0])
    z = (x - mean) / torch.sqrt(var + eps)
    lam = torch.tensor(l2s, device=device).view(a, 1, 1)  # each head's penalty
    # the closure works through rows in chunks with labels as indices (a one-hot per chunk only): logits,
    # log-probabilities and gradients of an ImageNet-sized cache at once would need ~30 GB; a set that fits
    # one chunk (CIFAR-sized) is computed exactly as in one piece
    rows = max(1, ROW_CHUNK_ELEMENTS // (a * k * num_classes))
    w = torch.stack([h.fc.weight.detach() for h in heads]).requires_grad_(True)  # [A, K*C, D]
    b = torch.stack([h.fc.bias.detach() for h in heads]).requires_grad_(True)  # [A, K*C]
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=cfg.max_iter, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)
    losses: list[float] = []

    @torch.no_grad()
    def closure():
        nll, gw, gb = 0.0, 0.0, 0.0
        for lo in range(0, n, rows):
            zc, yc = z[:, lo:lo + rows], y[lo:lo + rows]
            m = yc.shape[0]
            onehot = torch.nn.functional.one_hot(yc, num_classes).float().view(m, k * num_classes)  # [m, K*C]
            logits = torch.baddbmm(b.unsqueeze(1), zc, w.transpose(1, 2)).view(a, m, k, num_classes)
            logp = torch.log_softmax(logits, dim=-1).view(a, m, k * num_classes)
            nll = nll + (logp * onehot).sum()
            g = (logp.exp() - onehot) / n  # [A, m, K*C]
            gw = gw + torch.bmm(g.transpose(1, 2), zc)
            gb = gb + g.sum(1)
        loss = -nll / n + 0.5 * (lam * w * w).sum()
        w.grad = gw + lam * w
        b.grad = gb
        losses.append(float(loss) / a)
        bar.update(1)
        return loss

    # L-BFGS evaluates the loss at most max_iter * 5 / 4 times (torch's default max_eval); it usually stops earlier
    bar = progress(cfg.max_iter * 5 // 4, desc=f"linear head{'s' if a > 1 else ''} (L-BFGS loss evaluations)",
                   enabled=a * n * d * k * num_classes > PROGRESS_MULTIPLIES and launched_rank_is_zero())
    with threads_for(a * n * d):
        opt.step(closure)
    bar.close()
    seconds = time.perf_counter() - t0
    for i, h in enumerate(heads):
        with torch.no_grad():
            h.fc.weight.copy_(w[i])
            h.fc.bias.copy_(b[i])
        h.eval()
    return [HeadFit(h, losses[-1:], seconds / a) for h in heads]


def l2_grid(cfg: LinearProbeConfig) -> list[float]:
    """``cfg.l2_grid`` as sorted floats: the order of every search, curve and hits tensor over it."""
    return sorted(float(v) for v in cfg.l2_grid)


def fit_grid(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig, grid: Sequence[float], *,
             seed: int = 0, device: torch.device | str = "cpu", solo: bool = False) -> list[HeadFit]:
    """One head per penalty of ``grid``, all on the same x [N, D], y: fitted as batched problems of at most
    :data:`BATCHED_ELEMENTS` feature floats (so an ImageNet-sized set is not copied len(grid) times at once).

    ``solo``: each head fitted on its own instead, exactly as :func:`fit_cached` fits it (same start, its own
    L-BFGS run and stopping point). A batched run is one L-BFGS over all heads' parameters: it stops when the
    slowest problem does (often ``max_iter``), so it costs len(grid) x that many iterations, and a head's last
    digits depend on the penalties beside it; solo runs stop each at its own convergence, which the strong
    penalties reach in a fraction of the iterations."""
    grid = [float(v) for v in grid]
    if solo:
        return [fit_cached(x, y, num_classes, cfg, seed=seed, device=device, l2=v) for v in grid]
    per_batch = max(1, BATCHED_ELEMENTS // max(x.numel(), 1))
    fits: list[HeadFit] = []
    for i in range(0, len(grid), per_batch):
        part = grid[i:i + per_batch]
        fits += fit_cached_many([x] * len(part), y, num_classes, cfg, seed=seed, device=device, l2=part)
    return fits


def curve_hits(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
               num_classes: int, cfg: LinearProbeConfig, *, seed: int = 0,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Per grid point and test item, whether the head fitted on ALL of x_train [N, D] (labels y_train [N]) with
    that penalty classifies the item right (top-1): [G, N_test] bool, rows in the order of :func:`l2_grid`.
    Two models' hits on the same items give a paired difference (and its bootstrap) at every penalty."""
    fits = fit_grid(x_train, y_train, num_classes, cfg, l2_grid(cfg), seed=seed, device=device)
    y_test = y_test.view(-1).cpu()
    return torch.stack([predict(f.head, x_test)[:, 0].argmax(-1) == y_test for f in fits])


def accuracy_curve(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   num_classes: int, cfg: LinearProbeConfig, *, seed: int = 0,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Test top-1 of the probe at every penalty of ``cfg.l2_grid``, each head fitted on all of x_train:
    {"grid": sorted l2 values, "top1": one accuracy per value} (see :func:`curve_hits`)."""
    hits = curve_hits(x_train, y_train, x_test, y_test, num_classes, cfg, seed=seed, device=device)
    return curve_from_hits(l2_grid(cfg), hits)


def curve_from_hits(grid: Sequence[float], hits: torch.Tensor) -> dict[str, Any]:
    """{"grid", "top1"} from a :func:`curve_hits` tensor [G, N] (NaN top-1 for an empty test set)."""
    top1 = [float(h.float().mean()) if h.numel() else float("nan") for h in hits]
    return {"grid": [float(v) for v in grid], "top1": top1}


def validation_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, validation) of a seeded split of labels y [N]: ``fraction`` of each class (rounded,
    at least one image of each class stays in the fit part) goes to validation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.shape[0], generator=g)
    fit, val = [], []
    for c in torch.unique(y).tolist():
        idx = perm[y[perm] == c]
        k = min(int(math.floor(fraction * idx.numel() + 0.5)), idx.numel() - 1)
        val.append(idx[:k])
        fit.append(idx[k:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def select_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig, *, seed: int = 0,
              device: torch.device | str = "cpu", solo: bool = False) -> dict[str, Any]:
    """Choose the probe's l2 on a validation share of the training features x [N, D], labels y [N].

    One head per value of ``cfg.l2_grid`` is fitted on the fit part and scored (top-1) on the validation
    part. Rule: the largest l2 whose validation top-1 is within one standard error of the best
    (sqrt(p (1 - p) / n_val) at the best p), so that a penalty is only relaxed when that measurably helps.
    Returns the record written into the result file (``l2`` is the choice). ``solo``: see :func:`fit_grid`."""
    fit_idx, val_idx = validation_split(y, cfg.l2_val_fraction, seed)
    if val_idx.numel() == 0 or fit_idx.numel() < 2:
        raise ConfigError(f"{y.shape[0]} training images are too few to choose linprobe.l2 on a validation share "
                          f"of {cfg.l2_val_fraction:g}; set linprobe.l2=VALUE")
    grid = l2_grid(cfg)
    xv, yv = x[val_idx], y[val_idx]
    fits = fit_grid(x[fit_idx], y[fit_idx], num_classes, cfg, grid, seed=seed, device=device, solo=solo)
    acc = [topk_accuracy(predict(f.head, xv)[:, 0], yv) for f in fits]
    best = max(acc)
    se = math.sqrt(best * (1 - best) / val_idx.numel())
    chosen = max(v for v, a in zip(grid, acc) if a >= best - se - 1e-12)
    return {"l2": chosen, "rule": "one_se", "grid": grid, "val_top1": acc, "best_val_top1": best, "se": se,
            "fit_images": int(fit_idx.numel()), "val_images": int(val_idx.numel()),
            "val_fraction": cfg.l2_val_fraction}


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig, *, seed: int = 0,
              device: torch.device | str = "cpu", l2: float | None = None,
              rule: str | None = None) -> tuple[HeadFit, dict[str, Any]]:
    """The cached probe: one head fitted on all of x [N, D] with a penalty that is, in this order,
    ``l2`` (fixed by the caller, e.g. shared by the models of a comparison; ``rule`` says how it was chosen),
    ``cfg.l2`` (set by the user), or chosen by :func:`select_l2` on the training features alone.
    Returns (fit, {"l2", "l2_rule", "l2_selection": the search's record or None}); ``l2_rule`` is ``rule``
    (default "given by the caller"), "given" or "one_se_on_validation" respectively."""
    t0 = time.perf_counter()
    selection = None
    if l2 is not None:
        l2, how = float(l2), rule or "given by the caller"
    elif rule is not None:
        raise ValueError("fit_probe: a rule without an l2 to go with it")
    elif cfg.l2 is not None:
        l2, how = cfg.l2, "given"
    else:
        selection = select_l2(x, y, num_classes, cfg, seed=seed, device=device)
        l2, how = selection.pop("l2"), "one_se_on_validation"
    fit = fit_cached(x, y, num_classes, cfg, seed=seed, device=device, l2=l2)
    fit.seconds = time.perf_counter() - t0
    return fit, {"l2": l2, "l2_rule": how, "l2_selection": selection}


@torch.no_grad()
def predict(head: LinearHead, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """features [N, D] -> logits [N, K, C] (eval mode: BatchNorm uses its running statistics)."""
    head.eval()
    device = next(head.parameters()).device
    return torch.cat([head(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)])


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """logits [N, C], y [N] -> fraction of samples whose label is among the k highest logits."""
    if y.numel() == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    hit = (logits.topk(k, dim=-1).indices == y.view(-1, 1)).any(-1)
    return float(hit.float().mean())
