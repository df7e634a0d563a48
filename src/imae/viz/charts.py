"""The report's training charts: every loss term of a run on one shared axis, and small charts of their
own (labelled axes) for the learning rate, the mixing weight alpha, the same-class rate, the time spent
waiting for data, for fine-tuning the test accuracy and, with ``train.monitor_every``, the training monitor's
frozen kNN top-1 and k-means NMI and an i-MAE's un-mixing gain scored against its teacher. Input: the ``epoch``
records of log.jsonl."""

from __future__ import annotations

from typing import Any

from imae.viz.output import png_bytes

LOSS_TERMS = ("loss", "rec_sub", "rec_dom", "distill_sub", "distill_dom", "test_loss")
# (title, y label, keys, y range): each drawn only when some record has its first key
SMALL = [
    ("learning rate", "lr", ("lr",), None),
    ("mixing weight alpha", "alpha (mean ± sd)", ("alpha_mean",), (0.0, 0.5)),
    ("same-class pairs", "share of pairs", ("same_class_rate",), (-0.02, 1.02)),
    ("waiting for data", "seconds per epoch", ("data_wait_s",), None),
    ("test accuracy", "top-1 / top-5", ("test_top1", "test_top5"), (0.0, 1.0)),
    ("monitor: frozen features", "kNN top-1 / k-means NMI", ("monitor_knn_top1", "monitor_nmi"), (0.0, 1.0)),
    ("monitor: un-mixing gain", "gain at α=0.3 vs its teacher", ("monitor_gain_sub_vs_teacher",), None),
]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    pts = [(r["epoch"], float(r[key])) for r in records if number(r.get(key)) and isinstance(r.get("epoch"), int)]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_keys(records: list[dict[str, Any]]) -> list[str]:
    """The loss terms the records hold: the known ones in a fixed order, then any other ``*loss*`` key."""
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    known = [k for k in LOSS_TERMS if k in present]
    return known + sorted(k for k in present if "loss" in k and k not in known)


def training_chart_png(records: list[dict[str, Any]]) -> bytes | None:
    """PNG bytes of the run's training charts (None without epoch records)."""
    if not records:
        return None

    fig = training_chart(records)
    return png_bytes(fig, close=True, bbox_inches="tight")


def training_chart(records: list[dict[str, Any]]):
    """The matplotlib figure: axes[0] the loss terms, then one small axis per logged quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    small = [s for s in SMALL if _series(records, s[2][0])[0]]
    cols = max(1, (len(small) + 1) // 2)
    fig = plt.figure(figsize=(4.6 + 2.3 * cols, 3.6), dpi=100)
    grid = fig.add_gridspec(2, 2 + cols, wspace=0.55, hspace=0.75)
    ax = fig.add_subplot(grid[:, :2])
    for k in loss_keys(records):
        x, y = _series(records, k)
        ax.plot(x, y, label=k, linewidth=1.8 if k == "loss" else 1.2, marker="." if len(x) < 20 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over the epoch)")
    ax.set_title("loss terms", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for i, (title, ylabel, keys, ylim) in enumerate(small):
        a = fig.add_subplot(grid[i % 2, 2 + i // 2])
        for k in keys:
            x, y = _series(records, k)
            if not x:
                continue
            a.plot(x, y, linewidth=1.2, label=k if len(keys) > 1 else None, marker="." if len(x) < 20 else None)
            if k == "alpha_mean":
                xs, sd = _series(records, "alpha_std")
                if xs == x:
                    a.fill_between(x, [m - s for m, s in zip(y, sd)], [m + s for m, s in zip(y, sd)], alpha=0.25)
        if len(keys) > 1:
            a.legend(fontsize=6)
        if ylim:
            a.set_ylim(*ylim)
        a.set_title(title, fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        a.set_xlabel("epoch", fontsize=7)
        a.set_ylabel(ylabel, fontsize=7)
        a.tick_params(labelsize=6)
        a.grid(alpha=0.3)
    return fig
