"""Image grids of an exact pixel size (matplotlib, Agg): every panel is CELL x CELL pixels.

A grid of R rows and C columns is ``LEFT + C * CELL`` pixels wide (LEFT only with row labels) and
``HEADER + R * CELL`` high; :func:`grid_pixels` says so, and tests check the PNGs against it. The panels
are composed into one pixel canvas (nearest-neighbour upscaling, heat maps blended in), placed 1:1 on
the figure, and only the titles are drawn as text.

Masking is drawn with two marks that no image pixel is confused with: removed patches of a masked input
are filled with :data:`REMOVED_RGB` (blue), and in a reconstruction the edge between visible patches
(the input's own pixels) and removed ones (the prediction) is outlined in :data:`VISIBLE_RGB` (yellow).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imae.viz.output import save_figure  # noqa: E402

CELL = 96  # pixels per panel (a 2-pixel white gap included)
HEADER = 44  # column titles (two lines) under the figure title
LEFT = 90  # row labels
DPI = 100
REMOVED_RGB = (0.18, 0.36, 0.72)  # removed patches of a masked input
VISIBLE_RGB = (1.0, 0.82, 0.0)  # outline of the visible patches of a reconstruction
MASK_LEGEND = "blue: removed patches; yellow outline: visible patches (input pixels), inside it the prediction"


def grid_pixels(rows: int, cols: int, row_labels: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of a grid figure."""
    return (LEFT if row_labels else 0) + cols * CELL, HEADER + rows * CELL


def to_hwc(img: torch.Tensor, grey: bool = False, removed: torch.Tensor | None = None) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [H, W, 3] float array (one channel is repeated; ``grey``: the channels'
    mean, for greyscale data). ``removed`` [1, H, W] (1 = removed patch): those pixels in REMOVED_RGB."""
    a = img.detach().float().cpu().clamp(0, 1)
    if grey:
        a = a.mean(0, keepdim=True)
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    out = a.permute(1, 2, 0).numpy().copy()
    if removed is not None:
        out[removed[0].cpu().numpy() > 0.5] = REMOVED_RGB
    return out


def _outline(tile: np.ndarray, visible: np.ndarray) -> None:
    """Draw, on a square tile, the edges between visible (True) and removed cells of the patch grid
    ``visible`` [g, g], and the tile's border along visible cells, in VISIBLE_RGB."""
    g, size = visible.shape[0], tile.shape[0]
    edge = [-(-i * size // g) for i in range(g + 1)]  # where nearest upscaling starts each cell
    padded = np.pad(visible, 1, constant_values=False)
    for i, j in zip(*np.nonzero(visible)):
        y0, y1, x0, x1 = edge[i], edge[i + 1] - 1, edge[j], edge[j + 1] - 1
        if not padded[i, j + 1]:  # the cell above is removed (or outside)
            tile[y0, x0:x1 + 1] = VISIBLE_RGB
        if not padded[i + 2, j + 1]:
            tile[y1, x0:x1 + 1] = VISIBLE_RGB
        if not padded[i + 1, j]:
            tile[y0:y1 + 1, x0] = VISIBLE_RGB
        if not padded[i + 1, j + 2]:
            tile[y0:y1 + 1, x1] = VISIBLE_RGB


def _fit(img: np.ndarray, size: int, mode: str = "nearest") -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    t = F.interpolate(t, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return t[0].permute(1, 2, 0).numpy() if img.ndim == 3 else t[0, 0].numpy()


def save_grid(panels: list[list[np.ndarray | None]], path: Path, col_titles: list[str] | None = None,
              row_labels: list[str] | None = None, overlays: list[list[np.ndarray | None]] | None = None,
              title: str | None = None, outlines: list[list[np.ndarray | None]] | None = None) -> Path:
    """Draw ``panels[r][c]`` ([H, W, 3] arrays in [0, 1]; None leaves a blank) and save a PNG of
    ``grid_pixels`` size (atomically). ``overlays[r][c]``: a [h, w] heat map in [0, 1] blended over the
    panel; ``outlines[r][c]``: a boolean patch grid [g, g] whose visible cells (True) are outlined."""
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
            if outlines is not None and outlines[r][c] is not None:
                _outline(tile, np.asarray(outlines[r][c], dtype=bool))
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
    try:
        return save_figure(fig, Path(path), dpi=DPI)
    finally:
        plt.close(fig)
