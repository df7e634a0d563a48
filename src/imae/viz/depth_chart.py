"""The report's depth figure: each headline measure against the encoder block it was read at (``--layers``),
every run one line with its 95% band.

Measures, each drawn where some run has per-layer results (:mod:`imae.eval.depth`): the un-mixing gain of the
subordinate at the headline alpha (``separability``; band: its pair-bootstrap interval), linear-probe and kNN
top-1 (``linprobe`` / ``knn``, else ``semantics``; band: the Wilson interval over the test images) and k-means NMI
(``semantics``; no interval, drawn without a band).
"""

from __future__ import annotations

import math
from typing import Any

from imae.eval.depth import layer_entries
from imae.eval.separability_result import SeparabilityResult
from imae.viz.output import png_bytes

Point = tuple[int, float, float | None, float | None]  # block, value, interval low, interval high


def wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` of ``n`` trials."""
    if n <= 0:
        return math.nan, math.nan
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def depth_series(results: dict[str, dict[str, Any]]) -> dict[str, list[Point]]:
    """One run's result records by command -> {measure title: [(block, value, low, high)]}, per-layer results
    only."""
    out: dict[str, list[Point]] = {}

    def per_layer(command: str) -> dict[int, dict[str, Any]]:
        record = results.get(command) or {}
        return layer_entries(record.get("results") or {})

    def images(command: str) -> int:
        return int(((results.get(command) or {}).get("data") or {}).get("eval_images") or 0)

    sep = per_layer("separability")
    if sep:
        pts = []
        for k, entry in sorted(sep.items()):
            h = SeparabilityResult.from_json(entry).headline()
            if h["gain"] is not None:
                pts.append((k, h["gain"], *h["gain_ci"]))
        out[f"un-mixing gain (sub, α={h['alpha']})"] = pts
    sem = per_layer("semantics")
    for measure, title in (("linprobe", "linear probe top-1"), ("knn", "kNN top-1")):
        own = per_layer(measure)
        source, n = (own, images(measure)) if own else (sem, images("semantics"))
        pts = []
        for k, entry in sorted(source.items()):
            top1 = entry.get("top1") if own else (entry.get(measure) or {}).get("top1")
            if top1 is not None:
                pts.append((k, top1, *wilson(top1, n)))
        if pts:
            out[title] = pts
    nmi = [(k, e["nmi"], None, None) for k, e in sorted(sem.items()) if e.get("nmi") is not None]
    if nmi:
        out["k-means NMI"] = nmi
    return out


def depth_figure(named: list[tuple[str, dict[str, dict[str, Any]]]]) -> bytes | None:
    """PNG: one axis per measure, each run's measure against the block with its band; None when no run has
    per-layer results."""
    series = [(name, depth_series(res)) for name, res in named]
    titles: list[str] = []
    for _, s in series:
        titles += [t for t in s if t not in titles]
    if not titles:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(titles), figsize=(3.6 * len(titles), 3.2), dpi=110, squeeze=False)
    for ax, title in zip(axes[0], titles):
        for name, s in series:
            pts = s.get(title)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            line = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=name)[0]
            if all(p[2] is not None and p[3] is not None for p in pts):
                ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(), alpha=0.2)
        if title.startswith("un-mixing"):
            ax.axhline(0, color="black", linewidth=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="encoder block (its output, final norm applied)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, close=True)
