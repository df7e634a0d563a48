"""``imae compare A B``: B minus A on identical test items, with paired-bootstrap intervals.

Both checkpoints are scored against one reference, a *referee* named with ``--reference`` (there is no default:
a compared i-MAE's teacher, or A itself, would favour the model that resembles it; naming the teacher is
allowed and the output says so), on the same disjoint pairs, masks and bootstrap resamples. The metrics:

- ``gain_sub``, ``gain_dom``: the un-mixing gain (R^2 from the mixture minus R^2 from the partner alone) of
  each source at the training mask ratio, per alpha, in the headline space (distillation, else encoder);
  ``r2_sub``: the mixture R^2 it is the first term of; ``partner_r2_sub``: the second (alpha-free);
- ``branch_r2_sub``: the i-MAE's own branch map, nothing refitted (only when both have branches);
- ``sub_class_acc``: the subordinate's class from the pooled mixture latent, on different-class pairs;
- ``linprobe`` and ``knn``: top-1 on the clean evaluation split (resampled over its images). The probe's
  penalty is **one** for both models, chosen before either is looked at: ``linprobe.l2`` when set, else by
  the one-standard-error rule on a validation share of the *reference's* training features. ``linprobe_curve``
  gives both models' top-1 (and the difference) at every penalty of ``linprobe.l2_grid``.

A difference whose interval excludes 0 is a difference the test items support at that level; the interval says
nothing about seeds or teachers (see ``imae report`` groups and ``studies/`` for that). A model already measured
by ``imae separability`` with the same reference and settings is not measured again: its per-item scores are
read from the store (:mod:`imae.eval.item_store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imae.config.evaluate import EvalConfig
from imae.errors import ConfigError
from imae.eval.attentive import attentive_at
from imae.eval.bootstrap import Resampler
from imae.eval.depth import is_last_only, parse_layers
from imae.eval.features import extract_split
from imae.eval.knn import knn_predict
from imae.eval.pairs import make_pairs
from imae.eval.probe_heads import curve_hits, fit_probe, predict, select_l2
from imae.eval.separability import Measurement, measure_stored
from imae.eval.subject import Subject, load_subject, separability_defaults, shared_reference

SHARED_L2_RULE = "shared: one_se_on_validation of the reference's training features"


def _diff(rs: Resampler, a: float, b: float, draws_a: torch.Tensor, draws_b: torch.Tensor) -> dict[str, Any]:
    return {"a": a, "b": b, "diff": b - a, "ci": rs.interval(draws_b - draws_a)}


def separability_diffs(ma: Measurement, mb: Measurement, alphas: list[float]) -> dict[str, dict[str, Any]]:
    """Per alpha: the gain of each source, the mixture and partner-only R^2(sub), branch R^2(sub) and sub-class
    accuracy on different-class pairs, B minus A."""
    rs = ma.scorer.rs
    head = ma.result.head
    rk, space = head["ratio"], head["space"]
    if mb.result.head["space"] != space:  # a reference without a distillation space in one of them: encoder space
        space = "encoder"

    def draws(m: Measurement, key: tuple) -> tuple[float, torch.Tensor]:
        e = m.raw[key]
        return e.r2, rs.r2_draws(e.sse, e.sst)

    def gain(m: Measurement, who: str, ak: str) -> tuple[float, torch.Tensor]:
        r2m, dm = draws(m, ("mixture", rk, "encoder", space, who, ak))
        r2p, dp = draws(m, ("partner", rk, "encoder", space, who))
        return r2m - r2p, dm - dp

    out: dict[str, dict[str, Any]] = {"gain_sub": {}, "gain_dom": {}, "r2_sub": {}, "branch_r2_sub": {},
                                      "sub_class_acc": {}}
    diff_pairs = ~ma.scorer.same
    for alpha in alphas:
        ak = f"{alpha:g}"
        for who in ("sub", "dom"):
            (ga, da), (gb, db) = gain(ma, who, ak), gain(mb, who, ak)
            out[f"gain_{who}"][ak] = _diff(rs, ga, gb, da, db)
        (ra, da), (rb, db) = (draws(m, ("mixture", rk, "encoder", space, "sub", ak)) for m in (ma, mb))
        out["r2_sub"][ak] = _diff(rs, ra, rb, da, db)
        key = ("branch", rk, "sub", ak)
        if key in ma.raw and key in mb.raw:
            (ra, da), (rb, db) = draws(ma, key), draws(mb, key)
            out["branch_r2_sub"][ak] = _diff(rs, ra, rb, da, db)
        key = ("acc", "sub", ak)
        if key in ma.raw and key in mb.raw and int(diff_pairs.sum()):
            ha, hb = ma.raw[key][diff_pairs], mb.raw[key][diff_pairs]
            out["sub_class_acc"][ak] = _diff(rs, float(ha.double().mean()), float(hb.double().mean()),
                                             rs.mean_draws(ma.raw[key], diff_pairs),
                                             rs.mean_draws(mb.raw[key], diff_pairs))
    (pa, da), (pb, db) = (draws(m, ("partner", rk, "encoder", space, "sub")) for m in (ma, mb))
    out["partner_r2_sub"] = _diff(rs, pa, pb, da, db)
    out["where"] = {"space": space, "ratio": rk, "headline_alpha": head["alpha"],
                    "sub_class_acc_pairs": int(diff_pairs.sum())}
    return {k: v for k, v in out.items() if v}


def clean_features(subject: Subject, train, test, cfg: EvalConfig, *, device, cache, show_progress: bool,
                   layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled clean features (training [N, D], evaluation [M, D]) of the encoder's output (or of block
    ``layer``), cached as ``imae linprobe`` caches them."""
    kw = dict(device=device, cache=cache, show_progress=show_progress)
    pool = cfg.features.pool
    if layer is not None:
        kw["layers"] = [layer]
    ftr, fte = (extract_split(subject, split, cfg, which=which, **kw)
                for split, which in ((train, "training"), (test, "evaluation")))
    if layer is not None:
        ftr, fte = ftr[layer], fte[layer]
    return ftr.pooled(pool), fte.pooled(pool)


def shared_l2(reference: Subject, train, test, cfg: EvalConfig, **kw) -> tuple[float, str]:
    """The one probe penalty of a comparison, fixed before the compared models are looked at: ``linprobe.l2``
    when set, else chosen on a validation share of the reference's training features. Returns (l2, rule)."""
    if cfg.linprobe.l2 is not None:
        return float(cfg.linprobe.l2), "given"
    ftr, _ = clean_features(reference, train, test, cfg, **kw)
    return select_l2(ftr, train.labels, train.num_classes, cfg.linprobe, seed=cfg.seed, device=kw["device"])["l2"], \
        SHARED_L2_RULE


def clean_hits(subject: Subject, train, test, cfg: EvalConfig, l2: float, *, device, cache,
               show_progress: bool, layer: int | None = None) -> dict[str, torch.Tensor]:
    """Per test image, whether the linear probe (penalty ``l2``) and the kNN classify it right ({"linprobe",
    "knn"} -> [N] bool), and the probe's hits at every penalty of the grid ("curve" -> [G, N] bool); of the
    encoder's output, or of block ``layer``."""
    ftr, fte = clean_features(subject, train, test, cfg, device=device, cache=cache, show_progress=show_progress,
                              layer=layer)
    fit, _ = fit_probe(ftr, train.labels, train.num_classes, cfg.linprobe, seed=cfg.seed, device=device, l2=l2,
                       rule="shared")
    probe = predict(fit.head, fte)[:, 0].argmax(-1) == test.labels
    knn = knn_predict(ftr, train.labels, fte, train.num_classes, cfg.knn.k, cfg.knn.temperature).argmax(1)
    curve = curve_hits(ftr, train.labels, fte, test.labels, train.num_classes, cfg.linprobe, seed=cfg.seed,
                       device=device)
    return {"linprobe": probe, "knn": knn == test.labels, "curve": curve}


def compare(session, b_spec: str | Path, reference: str | None, cfg: EvalConfig) -> dict[str, Any]:
    """B minus A (``session.subject`` is A) on identical items. Returns the ``results``."""
    a = session.subject
    b = load_subject(b_spec, cfg.num_heads)
    if b.model.arch.num_patches != a.model.arch.num_patches or b.model.arch.img_size != a.model.arch.img_size:
        raise ConfigError(f"{a.label} and {b.label} see images of different sizes or patch grids; compare models "
                          f"of the same image and patch size (their masks must cover the same patches)")
    ref = shared_reference([a, b], reference, cfg.num_heads)
    b.model.to(session.device)
    ref.model.to(session.device)
    separability_defaults(cfg, a, b)
    test = session.split("eval")
    s = cfg.separability
    pairs = make_pairs(test.labels, s.fractions, s.same_class_p, cfg.seed, s.max_images)
    kw = dict(device=session.device, show_progress=session.show_progress, store=session.item_store)
    depth = a.model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    last_only = is_last_only(layers, depth)
    if not last_only and b.model.arch.depth != depth:
        raise ConfigError(f"{a.label} has {depth} blocks and {b.label} {b.model.arch.depth}; compare models block by "
                          f"block only when they are equally deep (--layers last compares their outputs)")
    ma, mb = measure_stored(a, ref, test, pairs, cfg, **kw), measure_stored(b, ref, test, pairs, cfg, **kw)
    # block k of both; --layers last: each model's own output
    per = {k: separability_diffs(ma.at_layer(k), mb.at_layer(k if not last_only else b.model.arch.depth), s.alphas)
           for k in layers}
    results: dict[str, Any] = {"a": a.describe(), "b": b.describe(),
                               "reference": {"a": ma.result.reference, "b": mb.result.reference},
                               "pairs": ma.results["pairs"], "mask_ratio": ma.results["mask_ratio"],
                               "bootstrap": ma.results["bootstrap"], "metrics": per[layers[-1]]}
    if test.has_labels:
        train = session.split("train")
        kw = dict(device=session.device, cache=session.cache, show_progress=session.show_progress)
        l2, rule = shared_l2(ref, train, test, cfg, **kw)  # one penalty for every block of both models
        rs = Resampler.draw(len(test), s.bootstrap, cfg.seed + 1, s.ci)
        for k, metrics in per.items():
            at = {} if last_only else {"layer": k}
            hits = [clean_hits(m, train, test, cfg, l2, **kw, **at) for m in (a, b)]
            clean_diffs(metrics, hits, rs, l2, rule, cfg)
        if cfg.probe.head == "attentive":  # beside the linear probe, at one setting for both models
            setting = shared_attentive_setting(ref, train, cfg, **kw)
            for k, metrics in per.items():
                ha, hb = (attentive_at(m, train, test, cfg, k if not last_only else m.model.arch.depth,
                                       setting=setting, **kw)[1] for m in (a, b))
                metrics["attentive"] = _diff(rs, float(ha.double().mean()), float(hb.double().mean()),
                                             rs.mean_draws(ha), rs.mean_draws(hb))
                metrics["attentive"].update(setting)
        results["test_images"] = len(test)
    if not last_only:
        results.update(layer=layers[-1], depth=depth, layers={str(k): {"metrics": m} for k, m in per.items()})
    return results


def shared_attentive_setting(reference: Subject, train, cfg: EvalConfig, *, device, cache,
                             show_progress: bool) -> dict[str, Any]:
    """The one attentive-probe setting of a comparison ({"lr", "weight_decay", "l2", "rule"}), fixed before the
    compared models are looked at: ``probe.lr`` and ``probe.weight_decay`` when set, else chosen on the
    reference's training tokens."""
    from imae.eval.attentive import SHARED, extract_tokens, setting_of

    x = None
    if cfg.probe.lr is None or cfg.probe.weight_decay is None:
        x = extract_tokens(reference.model, train, reference.fingerprint, layer=reference.model.arch.depth,
                           batch_size=cfg.features.batch_size, device=device, cache=cache,
                           show_progress=show_progress, desc="tokens (reference, training split)")
    chosen = setting_of(cfg, x, train.labels, train.num_classes, seed=cfg.seed, device=device)
    return {k: chosen[k] for k in ("lr", "weight_decay", "l2")} | {"rule": chosen["rule"] if x is None else SHARED}


def clean_diffs(metrics: dict[str, Any], hits: list[dict[str, torch.Tensor]], rs: Resampler, l2: float, rule: str,
                cfg: EvalConfig) -> None:
    """Add the linear probe's and the kNN's B - A (and the probe's curve over the l2 grid) to ``metrics``."""
    for name in ("linprobe", "knn"):
        ha, hb = hits[0][name], hits[1][name]
        metrics[name] = _diff(rs, float(ha.double().mean()), float(hb.double().mean()), rs.mean_draws(ha),
                              rs.mean_draws(hb))
    metrics["linprobe"].update(l2=l2, l2_rule=rule)
    grid = sorted(float(v) for v in cfg.linprobe.l2_grid)
    metrics["linprobe_curve"] = {
        f"{v:g}": _diff(rs, float(ca.double().mean()), float(cb.double().mean()), rs.mean_draws(ca),
                        rs.mean_draws(cb))
        for v, ca, cb in zip(grid, hits[0]["curve"], hits[1]["curve"])}


def format_table(results: dict[str, Any]) -> str:
    """The comparison as aligned text lines: metric, alpha (the probe curve: l2), A, B, B - A [CI], then the
    reference and what it is to each model."""
    a, b = results["a"]["label"], results["b"]["label"]
    lines = [f"{'metric':<16} {'α/l2':>6}  {a[:12]:>12}  {b[:12]:>12}  {'B - A':>8}  {'95% CI':>18}"]
    for metric, rows in results["metrics"].items():
        if metric == "where":
            continue
        items = rows.items() if "diff" not in rows else [("", rows)]
        for ak, r in items:
            lo, hi = r["ci"]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "n/a"
            lines.append(f"{metric:<16} {ak:>6}  {r['a']:>12.3f}  {r['b']:>12.3f}  {r['diff']:>+8.3f}  {ci:>18}")
    lines.append(reference_line(results))
    return "\n".join(lines)


def reference_line(results: dict[str, Any]) -> str:
    """Which reference both were scored against, and any role it has for them ("its own teacher")."""
    ref = results["reference"]
    notes = [f"{results[k]['label']}: {ref[k]['note']}" for k in ("a", "b") if ref[k].get("note")]
    return (f"reference: {ref['b']['label']} (" + ("; ".join(notes) if notes else "a referee for both") + ")")
