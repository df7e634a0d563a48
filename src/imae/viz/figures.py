"""The paper's figures (METHOD.md section 5) from checkpoints, as PNG files.

1. ``mixtures-<label>.png``: pairs mixed at every alpha of ``separability.alphas``; per alpha the masked
   mixture and the subordinate and dominant reconstructions (a vanilla MAE: its one reconstruction).
3. ``ablation-grid.png``: the same pairs, masks and alpha (``figures.alpha``) through every checkpoint,
   beside the unmasked mixture.
4. ``mask-ratios-<label>.png``: clean images masked at each of ``figures.mask_ratios`` and reconstructed
   (an i-MAE decodes with its dominant branch).

Reconstructions show the prediction at removed patches and the input (the mixture) at visible ones,
outlined; masked inputs show removed patches in blue (:mod:`imae.viz.grid`); greyscale data is drawn in
grey. ``figures.json`` says what each PNG shows (the report's captions) and which run it belongs to.
5. ``weights.png``: histograms of |w| of the encoder's weight matrices of every checkpoint, and
   ``attention-<label>.png``: the cls token's attention to the patches, per head, in block ``figures.layer``.

Images come from the evaluation split of the first checkpoint's data set, chosen and masked with
``seed``. Encoder-only checkpoints get figures 5 only (they have no decoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imae.console import info
from imae.data.augment import normalize
from imae.errors import CheckpointError
from imae.eval.run import open_session
from imae.eval.subject import Subject, load_subject
from imae.viz.attention import cls_attention
from imae.viz.grid import MASK_LEGEND, save_grid, to_hwc
from imae.viz.output import save_figure, write_file
from imae.viz.reconstruct import reconstruct, reconstruct_mixture, to_unit

NAMES = {"sub": "subordinate", "dom": "dominant", "rec": "reconstruction"}


class Display:
    """How images of one data set are drawn: de-normalised, greyscale data in grey, masks marked."""

    def __init__(self, mean, std, grey: bool) -> None:
        self.mean, self.std, self.grey = mean, std, grey

    def images(self, x: torch.Tensor, removed: torch.Tensor | None = None) -> list[np.ndarray]:
        """Normalised images [N, C, H, W] -> panels; ``removed`` [N, 1, H, W] fills removed patches blue."""
        unit = to_unit(x, self.mean, self.std)
        return [to_hwc(unit[i], self.grey, None if removed is None else removed[i]) for i in range(x.shape[0])]


def visible_grid(mask: torch.Tensor) -> list[np.ndarray]:
    """mask [N, L] (1 = removed) -> per image a boolean [g, g] grid, True at visible patches."""
    g = int(round(mask.shape[1] ** 0.5))
    return [(mask[i] < 0.5).view(g, g).cpu().numpy() for i in range(mask.shape[0])]


def _mixture_columns(model) -> list[str]:
    """What one alpha shows for this model, after the masked mixture."""
    if getattr(model, "kind", "mae") != "imae":
        return ["rec"]
    return ["sub", "dom"] if model.decoder_embed_dom is not None else ["sub"]


def _grid(cols: list[tuple[list[np.ndarray], list[np.ndarray] | None]]) -> tuple[list, list]:
    """Columns of (panels, outline grids or None) -> rows of panels and rows of outlines."""
    n = len(cols[0][0])
    panels = [[col[0][r] for col in cols] for r in range(n)]
    outlines = [[None if col[1] is None else col[1][r] for col in cols] for r in range(n)]
    return panels, outlines


def mixture_figure(subject: Subject, x_sub: torch.Tensor, x_dom: torch.Tensor, alphas: list[float],
                   mask_ratio: float, noise: torch.Tensor, show: Display, path: Path) -> Path:
    """Figure 1: rows are pairs; columns the two sources, then per alpha the masked mixture (the encoder's
    input) and the reconstructions (prediction at removed patches, the mixture at visible ones)."""
    kinds = _mixture_columns(subject.model)
    titles = ["subordinate\n(clean)", "dominant\n(clean)"]
    cols = [(show.images(x_sub), None), (show.images(x_dom), None)]
    for a in alphas:
        out = reconstruct_mixture(subject.model, x_sub, x_dom, a, mask_ratio, noise)
        vis = visible_grid(out["mask"])
        titles.append(f"mixture a={a:g}\n(masked input)")
        cols.append((show.images(out["mixture"], out["removed"]), None))
        for k in kinds:
            titles.append({"sub": f"rec. subordinate\na={a:g}", "dom": f"rec. dominant\na={a:g}",
                           "rec": f"rec. of mixture\na={a:g}"}[k])
            cols.append((show.images(out[k]), vis))
    panels, outlines = _grid(cols)
    return save_grid(panels, path, titles, outlines=outlines, title=f"{subject.label}: mixtures, mask {mask_ratio:g}")


def ablation_grid(subjects: list[Subject], x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float,
                  mask_ratio: float, noise: torch.Tensor, show: Display, path: Path) -> Path:
    """Figure 3: rows are pairs; columns the sources, the unmasked mixture, then each checkpoint's
    reconstructions of it under the same mask (visible patches outlined)."""
    titles = ["subordinate\n(clean)", "dominant\n(clean)", f"mixture a={alpha:g}\n(unmasked)"]
    cols = [(show.images(x_sub), None), (show.images(x_dom), None),
            (show.images(alpha * x_sub + (1 - alpha) * x_dom), None)]
    for s in subjects:
        out = reconstruct_mixture(s.model, x_sub, x_dom, alpha, mask_ratio, noise)
        vis = visible_grid(out["mask"])
        for k in _mixture_columns(s.model):
            titles.append(f"{s.label}\n{NAMES[k]}")
            cols.append((show.images(out[k]), vis))
    panels, outlines = _grid(cols)
    return save_grid(panels, path, titles, outlines=outlines, title=f"same pairs, alpha {alpha:g}, mask {mask_ratio:g}")


def mask_ratio_figure(subject: Subject, x: torch.Tensor, ratios: list[float], seed: int, show: Display,
                      path: Path) -> Path:
    """Figure 4: rows are images; columns the image, then per mask ratio the masked input and the
    reconstruction (prediction at removed patches, the image at visible ones, outlined)."""
    titles = ["image\n(clean)"]
    cols = [(show.images(x), None)]
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape[0], subject.model.arch.num_patches, generator=g).to(x.device)
    for r in ratios:
        out = reconstruct(subject.model, x, r, noise)
        titles += [f"mask {r:g}\n(masked input)", f"mask {r:g}\nreconstruction"]
        cols += [(show.images(x, out["removed"]), None), (show.images(out["rec"]), visible_grid(out["mask"]))]
    panels, outlines = _grid(cols)
    return save_grid(panels, path, titles, outlines=outlines, title=f"{subject.label}: mask ratios")


def weight_magnitudes(model) -> np.ndarray:
    """|w| of every encoder weight matrix (patch embedding, attention, MLP), one flat array."""
    sd = model.state_dict()
    keys = [k for k in model.encoder_keys() if k.endswith(".weight") and sd[k].ndim >= 2]
    return torch.cat([sd[k].detach().float().abs().flatten().cpu() for k in keys]).numpy()


def weights_figure(subjects: list[Subject], path: Path, small: float = 0.01) -> Path:
    """Figure 5a: |w| histograms of the encoders' weight matrices, overlaid (800 x 400 px)."""
    import matplotlib.pyplot as plt

    from imae.viz.grid import DPI

    fig, ax = plt.subplots(figsize=(8, 4), dpi=DPI)
    mags = {s.label: weight_magnitudes(s.model) for s in subjects}
    top = max(float(np.quantile(m, 0.999)) for m in mags.values())
    bins = np.linspace(0, top, 80)
    for label, m in mags.items():
        ax.hist(m, bins=bins, histtype="step", density=True, linewidth=1.2,
                label=f"{label}: |w|<{small:g} {100 * float((m < small).mean()):.1f}%, mean {m.mean():.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("|w| (encoder weight matrices)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return save_figure(fig, Path(path), dpi=DPI)
    finally:
        plt.close(fig)


def attention_figure(subject: Subject, x: torch.Tensor, layer: int, show: Display, path: Path) -> Path:
    """Figure 5b: rows are images; columns the image, then the cls attention of each head over it."""
    maps = cls_attention(subject.model, x, layer).cpu()  # [N, heads, g, g]
    maps = maps / maps.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    imgs = show.images(x)
    heads = maps.shape[1]
    panels = [[imgs[i]] * (heads + 1) for i in range(x.shape[0])]
    overlays = [[None] + [maps[i, h].numpy() for h in range(heads)] for i in range(x.shape[0])]
    depth = len(subject.model.blocks)
    titles = ["image"] + [f"head {h}" for h in range(heads)]
    return save_grid(panels, path, titles, overlays=overlays,
                     title=f"{subject.label}: cls attention, block {layer % depth + 1}/{depth}")


def make_figures(ckpts: list[str | Path], *, preset: str | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> list[Path]:
    """Every figure for ``ckpts``; data and options from the first checkpoint's configuration."""
    session = open_session(ckpts[0], preset=preset, overrides=overrides, sets=sets)
    cfg, f = session.cfg, session.cfg.figures
    subjects = [session.subject] + [load_subject(c, cfg.num_heads) for c in ckpts[1:]]
    _unique_labels(subjects)
    size = session.subject.model.arch.img_size
    for s in subjects:
        if s.model.arch.img_size != size:
            raise CheckpointError(f"{s.path} takes {s.model.arch.img_size}px images, {subjects[0].path} {size}px; "
                                  f"figures compare checkpoints of one image size")
        s.model.to(session.device).eval()
    split = session.split("eval")
    d = split.data
    n = min(f.images, len(split) // 2) or 1
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(split), generator=g)
    pick = order[:2 * n] if len(split) >= 2 else order.repeat(2)
    u8 = split.read(pick)
    x = normalize(u8, d.mean, d.std).to(session.device)
    x_sub, x_dom = x[:n], x[n:2 * n]
    noise = torch.rand(n, session.subject.model.arch.num_patches, generator=g).to(session.device)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else session.subject.default_output_dir / "figures"
    show = Display(d.mean, d.std, grey=is_greyscale(u8))
    alphas = ", ".join(f"{a:g}" for a in cfg.separability.alphas)
    made: list[tuple[Path, str | None, str]] = []  # (file, run label or None for comparisons, caption)
    decoders = [s for s in subjects if s.has_decoder]
    for s in subjects:
        if s not in decoders:
            info(f"{s.path} holds only an encoder: no reconstruction figures for it", session.show_progress)
            continue
        what = {"imae": "the reconstructions of its subordinate and dominant branches"
                if s.kind == "imae" and s.model.decoder_embed_dom is not None
                else "the reconstruction of its subordinate branch",
                "mae": "its one reconstruction (an MAE has a single decoder output; it reconstructs the mixture)"}
        made.append((mixture_figure(s, x_sub, x_dom, cfg.separability.alphas, f.mask_ratio, noise, show,
                                    out_dir / f"mixtures-{s.label}.png"), s.label,
                     f"Mixtures of {_count(n, 'evaluation pair')} at alpha = {alphas}: per pair the clean "
                     f"subordinate and dominant, then per alpha the masked mixture the encoder sees (mask ratio "
                     f"{f.mask_ratio:g}) and {what[s.kind]}. {MASK_LEGEND}."))
        made.append((mask_ratio_figure(s, x_sub, f.mask_ratios, cfg.seed, show, out_dir / f"mask-ratios-{s.label}.png"),
                     s.label, f"{_count(n, 'clean evaluation image')} masked at ratios "
                              f"{', '.join(f'{r:g}' for r in f.mask_ratios)}: per ratio the masked input and the "
                              f"reconstruction" + (" (an i-MAE decodes with its dominant branch)"
                                                   if s.kind == "imae" else "") + f". {MASK_LEGEND}."))
    if decoders:
        made.append((ablation_grid(decoders, x_sub, x_dom, f.alpha, f.mask_ratio, noise, show,
                                   out_dir / "ablation-grid.png"), None,
                     f"The same {_count(n, 'pair')}, alpha {f.alpha:g} and masks (ratio {f.mask_ratio:g}) through "
                     f"every checkpoint: the clean sources, the unmasked mixture, then each model's reconstruction(s) "
                     f"({', '.join(s.label for s in decoders)}). Yellow outline: visible patches (mixture pixels); "
                     f"inside it each model's prediction."))
    made.append((weights_figure(subjects, out_dir / "weights.png"), None,
                 f"Distribution of |w| over every encoder weight matrix of {', '.join(s.label for s in subjects)} "
                 f"(log density); the legend gives the share of |w| < 0.01 and the mean |w|."))
    for s in subjects:
        depth = len(s.model.blocks)
        made.append((attention_figure(s, x_sub, f.layer, show, out_dir / f"attention-{s.label}.png"), s.label,
                     f"Attention of the cls token to each patch, per head, in block {f.layer % depth + 1} of "
                     f"{depth}, over {_count(n, 'clean evaluation image')} (each map scaled to its maximum)."))
    write_manifest(out_dir, made)
    paths = [p for p, _, _ in made]
    info(f"figures: wrote {len(paths)} PNG files to {out_dir}", session.show_progress)
    return paths


MANIFEST = "figures.json"  # what each PNG shows, for the report's captions


def write_manifest(out_dir: Path, made: list[tuple[Path, str | None, str]]) -> Path:
    """``figures.json``: {"figures": [{"file", "run", "caption"}, ...]}, merged with an earlier one's entries
    for PNGs still there (atomic, as the PNGs)."""
    path = Path(out_dir) / MANIFEST
    entries = {e["file"]: e for e in read_manifest(Path(out_dir)) if (Path(out_dir) / e["file"]).is_file()}
    for p, run, caption in made:
        entries[p.name] = {"file": p.name, "run": run, "caption": caption}
    write_file(path, json.dumps({"figures": list(entries.values())}, indent=1) + "\n")
    return path


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
        return [e for e in data["figures"] if isinstance(e, dict) and isinstance(e.get("file"), str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def is_greyscale(u8: torch.Tensor) -> bool:
    """Whether images [N, C, H, W] are grey: one channel, or all channels equal (digits)."""
    return u8.shape[1] == 1 or bool((u8 == u8[:, :1]).all())


def _unique_labels(subjects: list[Subject]) -> None:
    seen: dict[str, int] = {}
    for s in subjects:
        if s.label in seen:
            seen[s.label] += 1
            s.label = f"{s.label}-{seen[s.label]}"
        else:
            seen[s.label] = 1
