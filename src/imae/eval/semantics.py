"""Degree of semantics (METHOD.md section 4): how much class information the frozen latent holds.

On clean images: linear-probe accuracy (cached fast path; with its ``l2_rule`` and its ``l2_curve``, the
test top-1 at every point of ``linprobe.l2_grid``, as ``imae linprobe``), weighted kNN accuracy, and the NMI between
k-means clusters (k = number of classes, on L2-normalised evaluation features) and the labels. On
mixtures: the separability schemes on pairs drawn with P(same class) = ``semantics.same_class_p``
(default 0.5, so that both kinds are well represented), reported separately for same-class and
different-class test pairs (``semantics.separability=false`` skips that part: a study that reads only the
clean-image measures).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from imae.config.evaluate import EvalConfig
from imae.errors import DataError
from imae.eval.attentive import attentive_at
from imae.eval.depth import by_layer, combine, layers_kw, parse_layers
from imae.eval.eval_split import Split
from imae.eval.features import FeatureCache, extract_split
from imae.eval.knn import knn_accuracy
from imae.eval.linprobe import probe_scores
from imae.eval.pairs import make_pairs
from imae.eval.probe_heads import accuracy_curve, fit_probe
from imae.eval.separability import measure
from imae.eval.subject import Subject


def kmeans_nmi(x: torch.Tensor, labels: torch.Tensor, num_classes: int, restarts: int = 10, seed: int = 0) -> float:
    """NMI between k-means clusters of L2-normalised x [N, D] (k = num_classes) and the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    feats = F.normalize(x.double(), dim=1).numpy()
    k = min(num_classes, feats.shape[0])
    clusters = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(feats)
    return float(normalized_mutual_info_score(labels.numpy(), clusters))


def run_semantics(subject: Subject, reference: Subject, train: Split, test: Split, cfg: EvalConfig, *,
                  device: torch.device, cache: FeatureCache | None, show_progress: bool = True) -> dict[str, Any]:
    """Every measure at each block of ``features.layers`` (one result entry per block, :mod:`imae.eval.depth`)."""
    if not (train.has_labels and test.has_labels):
        raise DataError(f"semantics needs class labels; {test.data.name} has none (an unlabeled ImageFolder?)")
    pool = cfg.features.pool
    depth = subject.model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    kw = dict(device=device, cache=cache, show_progress=show_progress, **layers_kw(layers, depth))
    ftr = by_layer(extract_split(subject, train, cfg, which="training", **kw), layers)
    fte = by_layer(extract_split(subject, test, cfg, which="evaluation", **kw), layers)
    t0 = time.perf_counter()
    entries = {k: clean_measures(ftr[k].pooled(pool), fte[k].pooled(pool), train, test, cfg, device)
               for k in layers}
    fit_s = time.perf_counter() - t0
    if cfg.probe.head == "attentive":  # beside the linear probe
        for k in layers:
            entries[k]["attentive"] = attentive_at(subject, train, test, cfg, k, device=device, cache=cache,
                                                   show_progress=show_progress)[0]
            fit_s += entries[k]["attentive"]["fit_s"]
    extract_s = sum(f.seconds for f in (*ftr.values(), *fte.values()))
    if cfg.semantics.separability:  # off: what a study's claims read, the clean-image measures only
        sep_cfg = copy.deepcopy(cfg)  # the pairs of this scheme are drawn with semantics.same_class_p
        s = sep_cfg.separability
        s.same_class_p = cfg.semantics.same_class_p
        pairs = make_pairs(test.labels, s.fractions, s.same_class_p, cfg.seed, s.max_images)
        sep = measure(subject, reference, test, pairs, sep_cfg, device=device, show_progress=show_progress)
        for k in layers:
            entries[k]["separability"] = {"same_class_p": cfg.semantics.same_class_p, **sep.at_layer(k).results}
        extract_s += sep.timing["extract_s"]
        fit_s += sep.timing["fit_s"]
    return {"results": combine(entries, depth), "timing": {"extract_s": extract_s, "fit_s": fit_s}}


def clean_measures(xtr: torch.Tensor, xte: torch.Tensor, train: Split, test: Split, cfg: EvalConfig,
                   device: torch.device) -> dict[str, Any]:
    """The linear probe, kNN and k-means NMI of pooled clean features (training [N, D], evaluation [M, D])."""
    fit, penalty = fit_probe(xtr, train.labels, train.num_classes, cfg.linprobe, seed=cfg.seed,
                             device=device)  # l2 chosen on the training split only
    curve = accuracy_curve(xtr, train.labels, xte, test.labels, train.num_classes, cfg.linprobe, seed=cfg.seed,
                           device=device)  # the test top-1 at every l2 of the grid
    return {
        "pool": cfg.features.pool,
        "linprobe": {**probe_scores(fit, xte, test.labels), **penalty, "l2_curve": curve},
        "knn": {"k": cfg.knn.k, "temperature": cfg.knn.temperature,
                **knn_accuracy(xtr, train.labels, xte, test.labels, train.num_classes, cfg.knn.k,
                               cfg.knn.temperature)},
        "nmi": kmeans_nmi(xte, test.labels, test.num_classes, cfg.semantics.kmeans_restarts, cfg.seed),
    }
