"""Image grids of an exact pixel size (matplotlib, Agg): every panel is CELL x CELL pixels.

A grid of R rows and C columns is ``LEFT + C * CELL`` pixels wide (LEFT only with row labels) and
``HEADER + R * CELL`` high; :func:`grid_pixels` says so, and tests check the PNGs against it. The panels
are composed into one pixel canvas (nearest-neighbour upscaling, heat maps blended in), placed 1:1 on
the figure, and only the titles are drawn as text.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CELL = 96  # pixels per panel (a 2-pixel white gap included)
HEADER = 44  # column titles (two lines) under the figure title
LEFT = 90  # row labels
DPI = 100


def grid_pixels(rows: int, cols: int, row_labels: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of a grid figure."""
    return (LEFT if row_labels else 0) + cols * CELL, HEADER + rows * CELL


def to_hwc(img: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [H, W, 3] float array (one channel is repeated)."""
    a = img.detach().float().cpu().clamp(0, 1)
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return a.permute(1, 2, 0).numpy()


def _fit(img: np.ndarray, size: int, mode: str = "nearest") -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    t = F.interpolate(t, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return t[0].permute(1, 2, 0).numpy() if img.ndim == 3 else t[0, 0].numpy()


def save_grid(panels: list[list[np.ndarray | None]], path: Path, col_titles: list[str] | None = None,
              row_labels: list[str] | None = None, overlays: list[list[np.ndarray | None]] | None = None,
              title: str | None = None) -> Path:
    """Draw ``panels[r][c]`` ([H, W, 3] arrays in [0, 1]; None leaves a blank) and save a PNG of
    ``grid_pixels`` size. ``overlays[r][c]``: a [h, w] heat map in [0, 1] blended over the panel."""
    rows, cols = len(panels), max(len(r) for r in panels)
    width, height = grid_pixels(rows, cols, row_labels is not None)
    left = LEFT if row_labels is not None else 0
    canvas = np.ones((height, width, 3), dtype=np.float32)
    inner = CELL - 2
    heat = plt.get_cmap("inferno")
    for r, row in enumerate(panels):
        for c, img in enumerate(row):
            if img is None:
                continue
            tile = _fit(img, inner)
            if overlays is not None and overlays[r][c] is not None:
                h = np.clip(_fit(overlays[r][c], inner, "bilinear"), 0, 1)
                tile = 0.4 * tile + 0.6 * heat(h)[..., :3]
            y0, x0 = HEADER + r * CELL, left + c * CELL
            canvas[y0:y0 + inner, x0:x0 + inner] = tile
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.figimage(canvas, xo=0, yo=0, origin="upper")
    for c, t in enumerate(col_titles or []):
        fig.text((left + (c + 0.5) * CELL) / width, 1 - (HEADER - 4) / height, t, ha="center", va="bottom",
                 fontsize=7)
    for r, t in enumerate(row_labels or []):
        fig.text(4 / width, (height - HEADER - (r + 0.5) * CELL) / height, t, ha="left", va="center", fontsize=7)
    if title:
        fig.text(0.5, 1 - 2 / height, title, ha="center", va="top", fontsize=8, weight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
