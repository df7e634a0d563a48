"""Linear separability of the latent space (METHOD.md section 4), by regression and by classification.

For every alpha, the frozen encoder E sees the mixtures ``m = alpha * x_sub + (1 - alpha) * x_dom`` of
held-out pairs (:mod:`imae.eval.pairs`), pooled like every other feature (``features.pool``).

Regression: closed-form ridge from a predictor to each target group, penalty chosen on the validation
pairs, variance-weighted R^2 on the test pairs (:mod:`imae.eval.ridge`). Predictors: ``encoder`` (pooled
E(m)) and, for an i-MAE, ``branch_sub`` / ``branch_dom`` (its branch maps applied to pooled E(m); the maps
are affine and token-wise, so this equals pooling the branch latents z_s, z_d). Targets: ``sub_pixels`` /
``dom_pixels`` (normalised images average-pooled to at most ``pixel_size`` per side) and ``sub_features`` /
``dom_features`` (pooled features of the clean images under a reference encoder).

Classification: one linear probe head per alpha (:func:`imae.eval.linear.fit_cached_many`) on pooled E(m)
predicts the subordinate's and the dominant's class; fitted on the fit + validation pairs, scored on the
test pairs.

Every score is also reported on the test pairs of the same class and of different classes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from imae.data.augment import normalize
from imae.eval.config import EvalConfig
from imae.eval.data import Split
from imae.eval.features import FeatureCache, extract
from imae.eval.linear import fit_cached_many, predict, topk_accuracy
from imae.eval.pairs import PairSet
from imae.eval.ridge import fit_ridge, r2_score, select_penalties
from imae.eval.subject import Subject
from imae.eval.threads import threads_for

TARGETS = ("sub_pixels", "dom_pixels", "sub_features", "dom_features")


def alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


def pixel_targets(split: Split, index: torch.Tensor, pixel_size: int) -> torch.Tensor:
    """Images ``index`` [M] -> normalised pixels average-pooled to at most ``pixel_size`` per side [M, 3*s*s]."""
    size = min(pixel_size, split.size)
    out = []
    for start in range(0, index.numel(), 1024):
        x = normalize(split.read(index[start:start + 1024]), split.data.mean, split.data.std)
        if size != split.size:
            x = F.adaptive_avg_pool2d(x, size)
        out.append(x.flatten(1))
    return torch.cat(out)


def target_table(split: Split, ref_feats: torch.Tensor, pairs: PairSet,
                 pixel_size: int) -> tuple[torch.Tensor, dict[str, slice]]:
    """Y [P, T]: the four target groups of every pair side by side, and each group's columns."""
    used = torch.unique(torch.cat([pairs.sub, pairs.dom]))
    where = torch.full((len(split),), -1, dtype=torch.long)
    where[used] = torch.arange(used.numel())
    pix = pixel_targets(split, used, pixel_size)
    blocks = {"sub_pixels": pix[where[pairs.sub]], "dom_pixels": pix[where[pairs.dom]],
              "sub_features": ref_feats[pairs.sub], "dom_features": ref_feats[pairs.dom]}
    groups, start = {}, 0
    for name in TARGETS:
        groups[name] = slice(start, start + blocks[name].shape[1])
        start += blocks[name].shape[1]
    return torch.cat([blocks[n].float() for n in TARGETS], dim=1), groups


def regress(x: torch.Tensor, y: torch.Tensor, groups: dict[str, slice], pairs: PairSet,
            penalties: list[float]) -> dict[str, dict[str, float]]:
    """Ridge from x [P, D] to each target group of y [P, T]: per group the chosen penalty, validation R^2,
    and test R^2 (all test pairs, same-class pairs, different-class pairs)."""
    fit_rows, val_rows, test_rows = pairs.rows("fit"), pairs.rows("val"), pairs.rows("test")
    fit = fit_ridge(x[fit_rows], y[fit_rows])
    choice = select_penalties(fit, x[val_rows], y[val_rows], penalties, groups)
    same = pairs.same[test_rows]
    x_test, y_test = x[test_rows], y[test_rows]
    out = {}
    for name, cols in groups.items():
        pred = fit.predict(x_test, choice[name].penalty, cols)
        truth = y_test[:, cols]
        out[name] = {"r2": r2_score(truth, pred), "r2_same": _subset_r2(truth, pred, same),
                     "r2_diff": _subset_r2(truth, pred, ~same), "val_r2": choice[name].val_r2,
                     "penalty": choice[name].penalty}
    return out


def _subset_r2(truth: torch.Tensor, pred: torch.Tensor, keep: torch.Tensor) -> float | None:
    return r2_score(truth[keep], pred[keep]) if int(keep.sum()) >= 2 else None


def classify(xs: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, pairs: PairSet, cfg: EvalConfig,
             device: torch.device) -> dict[str, dict[str, float | None]]:
    """Per alpha, one head on x [P, D] for (subordinate class, dominant class); test accuracy of each.
    The heads of all alphas are fitted in one batched L-BFGS run (independent problems)."""
    train = torch.cat([pairs.rows("fit"), pairs.rows("val")])
    test = pairs.rows("test")
    y = torch.stack([labels[pairs.sub], labels[pairs.dom]], dim=1)  # [P, 2]
    fits = fit_cached_many([x[train] for x in xs.values()], y[train], num_classes, cfg.linprobe, seed=cfg.seed,
                           device=device)
    same = pairs.same[test]
    out: dict[str, dict[str, float | None]] = {}
    for (key, x), fit in zip(xs.items(), fits):
        logits = predict(fit.head, x[test])  # [T, 2, C]
        scores: dict[str, float | None] = {}
        for k, who in enumerate(("sub", "dom")):
            scores[f"{who}_acc"] = topk_accuracy(logits[:, k], y[test, k])
            for tag, keep in (("same", same), ("diff", ~same)):
                scores[f"{who}_acc_{tag}"] = topk_accuracy(logits[keep, k], y[test][keep, k]) if keep.any() else None
        out[key] = scores
    return out


def predictors(subject: Subject, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pooled E(m) [P, D] -> the predictors: the encoder's, plus an i-MAE's branch latents."""
    out = {"encoder": pooled}
    model = subject.model
    if subject.kind == "imae":
        w = model.decoder_embed_sub
        with torch.no_grad():
            out["branch_sub"] = (pooled @ w.weight.detach().cpu().T + w.bias.detach().cpu()).float()
            if model.decoder_embed_dom is not None:
                w = model.decoder_embed_dom
                out["branch_dom"] = (pooled @ w.weight.detach().cpu().T + w.bias.detach().cpu()).float()
    return out


def run_separability(subject: Subject, reference: Subject, split: Split, pairs: PairSet, cfg: EvalConfig, *,
                     device: torch.device, cache: FeatureCache | None, show_progress: bool = True) -> dict[str, Any]:
    """Both schemes for every alpha of ``cfg.separability.alphas``. Returns the ``results`` and ``timing``."""
    s, pool = cfg.separability, cfg.features.pool
    extract_s = 0.0
    ref = extract(reference.model, split, reference.fingerprint, batch_size=cfg.features.batch_size,
                  device=device, cache=cache, show_progress=show_progress, desc=f"reference {reference.label}")
    extract_s += ref.seconds
    t0 = time.perf_counter()
    y, groups = target_table(split, ref.pooled(pool), pairs, s.pixel_size)
    fit_s = time.perf_counter() - t0
    regression: dict[str, dict[str, dict[str, Any]]] = {}
    mixtures: dict[str, torch.Tensor] = {}
    labeled = split.has_labels
    for alpha in s.alphas:
        feats = extract(subject.model, split, subject.fingerprint, pairs=pairs.index, alpha=alpha,
                        batch_size=cfg.features.batch_size, device=device, cache=cache,
                        show_progress=show_progress, desc=f"mixtures alpha={alpha:g}")
        extract_s += feats.seconds
        t0 = time.perf_counter()
        pooled = feats.pooled(pool)
        with threads_for(y.numel()):
            for name, x in predictors(subject, pooled).items():
                for target, scores in regress(x, y, groups, pairs, s.penalties).items():
                    regression.setdefault(name, {}).setdefault(target, {})[alpha_key(alpha)] = scores
        mixtures[alpha_key(alpha)] = pooled
        fit_s += time.perf_counter() - t0
    results: dict[str, Any] = {
        "alphas": [float(a) for a in s.alphas], "pool": pool, "pairs": pairs.summary(),
        "reference": {"path": str(reference.path), "label": reference.label, "is_self": reference is subject},
        "targets": {name: cols.stop - cols.start for name, cols in groups.items()},
        "regression": regression,
    }
    if s.classify and labeled:
        t0 = time.perf_counter()
        results["classification"] = classify(mixtures, split.labels, split.num_classes, pairs, cfg, device)
        fit_s += time.perf_counter() - t0
        results["classification_chance"] = _majority_rate(split.labels[pairs.sub[pairs.rows("test")]])
    return {"results": results, "timing": {"extract_s": extract_s, "fit_s": fit_s}}


def _majority_rate(labels: torch.Tensor) -> float:
    return float(torch.bincount(labels).max() / labels.numel()) if labels.numel() else float("nan")
