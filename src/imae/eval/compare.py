"""``imae compare A B``: B minus A on identical test items, with paired-bootstrap intervals.

Both checkpoints are scored against one reference (``--reference``, else the teacher of the first i-MAE
among them, else A), on the same pairs, masks and bootstrap resamples. The headline metrics:

- ``token_r2_sub``: token-level R^2 of the subordinate's reference tokens (distillation space) at the
  training mask ratio, per alpha; ``r2_sum``: R^2(sub) + R^2(dom);
- ``branch_r2_sub``: the i-MAE's own branch map, nothing refitted (only when both have branches);
- ``sub_class_acc``: the subordinate's class from the pooled mixture latent, per alpha;
- ``linprobe`` and ``knn``: top-1 on the clean evaluation split (resampled over its images).

A difference whose interval excludes 0 is a difference the test items support at that level; the
interval says nothing about seeds (see ``imae report`` groups for that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imae.config.evaluate import EvalConfig
from imae.errors import ConfigError
from imae.eval.bootstrap import Resampler
from imae.eval.features import extract_split
from imae.eval.knn import knn_predict
from imae.eval.linear import fit_probe, predict
from imae.eval.pairs import make_pairs
from imae.eval.separability import Measurement, measure
from imae.eval.subject import Subject, load_subject, separability_defaults, shared_reference


def _diff(rs: Resampler, a: float, b: float, draws_a: torch.Tensor, draws_b: torch.Tensor) -> dict[str, Any]:
    return {"a": a, "b": b, "diff": b - a, "ci": rs.interval(draws_b - draws_a)}


def separability_diffs(ma: Measurement, mb: Measurement, alphas: list[float]) -> dict[str, dict[str, Any]]:
    """Per alpha: token R^2(sub), the R^2 sum, branch R^2(sub) and sub-class accuracy, B minus A."""
    rs = ma.scorer.rs
    rk = ma.results["ratios"][0]
    space = "distill" if ma.results["targets"]["distill"] and mb.results["targets"]["distill"] else "encoder"
    out: dict[str, dict[str, Any]] = {"token_r2_sub": {}, "r2_sum": {}, "branch_r2_sub": {}, "sub_class_acc": {}}
    for alpha in alphas:
        ak = f"{alpha:g}"
        ea, eb = (m.raw[("r2", rk, "encoder", space, "sub", ak)] for m in (ma, mb))
        da, db = rs.r2_draws(ea.sse, ea.sst), rs.r2_draws(eb.sse, eb.sst)
        out["token_r2_sub"][ak] = _diff(rs, ea.r2, eb.r2, da, db)
        doms = [m.raw[("r2", rk, "encoder", space, "dom", ak)] for m in (ma, mb)]
        sa = da + rs.r2_draws(doms[0].sse, doms[0].sst)
        sb = db + rs.r2_draws(doms[1].sse, doms[1].sst)
        out["r2_sum"][ak] = _diff(rs, ea.r2 + doms[0].r2, eb.r2 + doms[1].r2, sa, sb)
        key = ("r2", rk, "branches", "distill", "sub", ak)
        if key in ma.raw and key in mb.raw:
            ba, bb = ma.raw[key], mb.raw[key]
            out["branch_r2_sub"][ak] = _diff(rs, ba.r2, bb.r2, rs.r2_draws(ba.sse, ba.sst), rs.r2_draws(bb.sse, bb.sst))
        key = ("acc", "sub", ak)
        if key in ma.raw and key in mb.raw:
            ha, hb = ma.raw[key], mb.raw[key]
            out["sub_class_acc"][ak] = _diff(rs, float(ha.double().mean()), float(hb.double().mean()),
                                             rs.mean_draws(ha), rs.mean_draws(hb))
    out["token_r2_sub_space"] = {"space": space, "ratio": rk}
    return {k: v for k, v in out.items() if v}


def clean_hits(subject: Subject, train, test, cfg: EvalConfig, *, device, cache,
               show_progress: bool) -> dict[str, torch.Tensor]:
    """Per test image, whether the linear probe (``imae linprobe``'s cached probe, l2 chosen on the training split)
    and the kNN classify it right: {"linprobe", "knn"} -> [N] bool."""
    kw = dict(device=device, cache=cache, show_progress=show_progress)
    pool = cfg.features.pool
    ftr = extract_split(subject, train, cfg, which="training", **kw).pooled(pool)
    fte = extract_split(subject, test, cfg, which="evaluation", **kw).pooled(pool)
    fit, _ = fit_probe(ftr, train.labels, train.num_classes, cfg.linprobe, seed=cfg.seed, device=device)  # as linprobe
    probe = predict(fit.head, fte)[:, 0].argmax(-1) == test.labels
    knn = knn_predict(ftr, train.labels, fte, train.num_classes, cfg.knn.k, cfg.knn.temperature).argmax(1)
    return {"linprobe": probe, "knn": knn == test.labels}


def compare(session, b_spec: str | Path, reference: str | None, cfg: EvalConfig) -> dict[str, Any]:
    """B minus A (``session.subject`` is A) on identical items. Returns the ``results``."""
    a = session.subject
    b = load_subject(b_spec, cfg.num_heads)
    if b.model.arch.num_patches != a.model.arch.num_patches or b.model.arch.img_size != a.model.arch.img_size:
        raise ConfigError(f"{a.label} and {b.label} see images of different sizes or patch grids; compare models "
                          f"of the same image and patch size (their masks must cover the same patches)")
    b.model.to(session.device)
    ref = shared_reference([a, b], reference, cfg.num_heads)
    ref.model.to(session.device)
    separability_defaults(cfg, a, b)
    test = session.split("eval")
    s = cfg.separability
    pairs = make_pairs(test.labels, s.fractions, s.same_class_p, cfg.seed, s.max_images)
    kw = dict(device=session.device, show_progress=session.show_progress)
    ma, mb = measure(a, ref, test, pairs, cfg, **kw), measure(b, ref, test, pairs, cfg, **kw)
    metrics = separability_diffs(ma, mb, s.alphas)
    results: dict[str, Any] = {"a": a.describe(), "b": b.describe(), "reference": ref.identity(b),
                               "pairs": ma.results["pairs"], "mask_ratio": ma.results["mask_ratio"],
                               "bootstrap": ma.results["bootstrap"], "metrics": metrics}
    if test.has_labels:
        train = session.split("train")
        hits = [clean_hits(m, train, test, cfg, device=session.device, cache=session.cache,
                           show_progress=session.show_progress) for m in (a, b)]
        rs = Resampler.draw(len(test), s.bootstrap, cfg.seed + 1, s.ci)
        for name in ("linprobe", "knn"):
            ha, hb = hits[0][name], hits[1][name]
            metrics[name] = _diff(rs, float(ha.double().mean()), float(hb.double().mean()), rs.mean_draws(ha),
                                  rs.mean_draws(hb))
        results["test_images"] = len(test)
    return results


def format_table(results: dict[str, Any]) -> str:
    """The comparison as aligned text lines: metric, alpha, A, B, B - A [CI]."""
    a, b = results["a"]["label"], results["b"]["label"]
    lines = [f"{'metric':<16} {'alpha':>5}  {a[:12]:>12}  {b[:12]:>12}  {'B - A':>8}  {'95% CI':>18}"]
    for metric, rows in results["metrics"].items():
        if metric == "token_r2_sub_space":
            continue
        items = rows.items() if "diff" not in rows else [("", rows)]
        for ak, r in items:
            lo, hi = r["ci"]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "n/a"
            lines.append(f"{metric:<16} {ak:>5}  {r['a']:>12.3f}  {r['b']:>12.3f}  {r['diff']:>+8.3f}  {ci:>18}")
    return "\n".join(lines)
