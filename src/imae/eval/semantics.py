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
from imae.eval.data import Split
from imae.eval.features import FeatureCache, extract_split
from imae.eval.knn import knn_accuracy
from imae.eval.linear import accuracy_curve, fit_probe
from imae.eval.linprobe import probe_scores
from imae.eval.pairs import make_pairs
from imae.eval.separability import run_separability
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
    if not (train.has_labels and test.has_labels):
        raise DataError(f"semantics needs class labels; {test.data.name} has none (an unlabeled ImageFolder?)")
    pool = cfg.features.pool
    kw = dict(device=device, cache=cache, show_progress=show_progress)
    ftr = extract_split(subject, train, cfg, which="training", **kw)
    fte = extract_split(subject, test, cfg, which="evaluation", **kw)
    t0 = time.perf_counter()
    fit, penalty = fit_probe(ftr.pooled(pool), train.labels, train.num_classes, cfg.linprobe, seed=cfg.seed,
                             device=device)  # l2 chosen on the training split only
    curve = accuracy_curve(ftr.pooled(pool), train.labels, fte.pooled(pool), test.labels, train.num_classes,
                           cfg.linprobe, seed=cfg.seed, device=device)  # the test top-1 at every l2 of the grid
    results: dict[str, Any] = {
        "pool": pool,
        "linprobe": {**probe_scores(fit, fte.pooled(pool), test.labels), **penalty, "l2_curve": curve},
        "knn": {"k": cfg.knn.k, "temperature": cfg.knn.temperature,
                **knn_accuracy(ftr.pooled(pool), train.labels, fte.pooled(pool), test.labels, train.num_classes,
                               cfg.knn.k, cfg.knn.temperature)},
        "nmi": kmeans_nmi(fte.pooled(pool), test.labels, test.num_classes, cfg.semantics.kmeans_restarts, cfg.seed),
    }
    fit_s = time.perf_counter() - t0
    timing = {"extract_s": ftr.seconds + fte.seconds, "fit_s": fit_s}
    if not cfg.semantics.separability:  # what a study's claims read: the clean-image measures only
        return {"results": results, "timing": timing}
    sep_cfg = copy.deepcopy(cfg)  # the pairs of this scheme are drawn with semantics.same_class_p
    s = sep_cfg.separability
    s.same_class_p = cfg.semantics.same_class_p
    pairs = make_pairs(test.labels, s.fractions, s.same_class_p, cfg.seed, s.max_images)
    sep = run_separability(subject, reference, test, pairs, sep_cfg, device=device, show_progress=show_progress)
    results["separability"] = {"same_class_p": cfg.semantics.same_class_p, **sep["results"]}
    timing = {"extract_s": timing["extract_s"] + sep["timing"]["extract_s"],
              "fit_s": fit_s + sep["timing"]["fit_s"]}
    return {"results": results, "timing": timing}
