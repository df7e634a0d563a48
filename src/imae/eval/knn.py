"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO).

Features are L2-normalised; each test sample's k most cosine-similar training samples vote for their
class with weight ``exp(similarity / T)``; the class with the largest total wins.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from imae.config.evaluate import EvalConfig
from imae.errors import DataError
from imae.eval.depth import by_layer, combine, layers_kw, parse_layers
from imae.eval.eval_split import Split
from imae.eval.features import FeatureCache, extract_split
from imae.eval.subject import Subject


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024, device: torch.device | str | None = None,
                bank_chunk: int = 65536) -> torch.Tensor:
    """train_x [N, D], train_y [N], test_x [M, D] -> class scores [M, C] (summed vote weights), on the CPU.

    Runs on ``device`` (default: the features' own), in chunks of ``chunk`` queries against ``bank_chunk``
    training samples at a time, so that an ImageNet-sized bank needs [chunk, bank_chunk] similarities, not
    [chunk, N] (the k best of each bank chunk are merged; one bank chunk is the plain top-k)."""
    device = torch.device(device) if device is not None else train_x.device
    bank = F.normalize(train_x.to(device).float(), dim=1)
    labels = train_y.to(device)
    k = min(k, bank.shape[0])
    scores = []
    for i in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[i:i + chunk].to(device).float(), dim=1)
        sims, idxs = [], []
        for j in range(0, bank.shape[0], bank_chunk):
            s, ix = (q @ bank[j:j + bank_chunk].T).topk(min(k, bank[j:j + bank_chunk].shape[0]), dim=1)
            sims.append(s)
            idxs.append(ix + j)
        sim, idx = (sims[0], idxs[0]) if len(sims) == 1 else _merge(torch.cat(sims, 1), torch.cat(idxs, 1), k)
        weight = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=device)
        votes.scatter_add_(1, labels[idx], weight)
        scores.append(votes)
    return torch.cat(scores).cpu() if scores else torch.zeros(0, num_classes)


def _merge(sim: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top, pos = sim.topk(k, dim=1)
    return top, idx.gather(1, pos)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 device: torch.device | str | None = None) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy of the weighted vote."""
    scores = knn_predict(train_x, train_y, test_x, num_classes, k, temperature, device=device)
    out = {"top1": float((scores.argmax(1) == test_y).float().mean())}
    if num_classes > 5:
        out["top5"] = float((scores.topk(5, dim=1).indices == test_y.view(-1, 1)).any(1).float().mean())
    return out


def run_knn(subject: Subject, train: Split, test: Split, cfg: EvalConfig, *, device: torch.device,
            cache: FeatureCache | None, show_progress: bool = True) -> dict[str, Any]:
    """kNN accuracy at each block of ``features.layers`` (one result entry per block, :mod:`imae.eval.depth`)."""
    if not (train.has_labels and test.has_labels):
        raise DataError(f"kNN needs class labels; {test.data.name} has none")
    pool = cfg.features.pool
    depth = subject.model.arch.depth
    layers = parse_layers(cfg.features.layers, depth)
    kw = dict(device=device, cache=cache, show_progress=show_progress, **layers_kw(layers, depth))
    ftr = by_layer(extract_split(subject, train, cfg, which="training", **kw), layers)
    fte = by_layer(extract_split(subject, test, cfg, which="evaluation", **kw), layers)
    t0 = time.perf_counter()

    def at(k: int) -> dict[str, Any]:
        acc = knn_accuracy(ftr[k].pooled(pool), train.labels, fte[k].pooled(pool), test.labels, train.num_classes,
                           cfg.knn.k, cfg.knn.temperature, device=device)
        return {"pool": pool, "k": cfg.knn.k, "temperature": cfg.knn.temperature, **acc,
                "train_images": len(train), "test_images": len(test)}

    results = combine({k: at(k) for k in layers}, depth)
    extract_s = sum(f.seconds for f in (*ftr.values(), *fte.values()))
    return {"results": results, "timing": {"extract_s": extract_s, "fit_s": time.perf_counter() - t0}}
