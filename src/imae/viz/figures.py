"""The paper's figures (METHOD.md section 5) from checkpoints, as PNG files.

1. ``mixtures-<label>.png``: pairs mixed at every alpha of ``separability.alphas``; per alpha the masked
   mixture and the subordinate and dominant reconstructions (a vanilla MAE: its one reconstruction).
3. ``ablation-grid.png``: the same pairs, masks and alpha (``figures.alpha``) through every checkpoint.
4. ``mask-ratios-<label>.png``: clean images masked at each of ``figures.mask_ratios`` and reconstructed
   (prediction with the visible patches pasted back; an i-MAE decodes with its dominant branch).
5. ``weights.png``: histograms of |w| of the encoder's weight matrices of every checkpoint, and
   ``attention-<label>.png``: the cls token's attention to the patches, per head, in block ``figures.layer``.

Images come from the evaluation split of the first checkpoint's data set, chosen and masked with
``seed``. Encoder-only checkpoints get figures 5 only (they have no decoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from imae.data.augment import normalize
from imae.engine.logs import info
from imae.errors import CheckpointError
from imae.eval.run import open_session
from imae.eval.subject import Subject, load_subject
from imae.viz.attention import cls_attention
from imae.viz.grid import save_grid, to_hwc
from imae.viz.reconstruct import reconstruct, reconstruct_mixture, to_unit

NAMES = {"sub": "subordinate", "dom": "dominant", "rec": "reconstruction"}


def _mixture_columns(model) -> list[str]:
    """What one alpha shows for this model, after the masked mixture."""
    if getattr(model, "kind", "mae") != "imae":
        return ["rec"]
    return ["sub", "dom"] if model.decoder_embed_dom is not None else ["sub"]


def mixture_figure(subject: Subject, x_sub: torch.Tensor, x_dom: torch.Tensor, alphas: list[float],
                   mask_ratio: float, noise: torch.Tensor, mean, std, path: Path) -> Path:
    """Figure 1: rows are pairs; columns the two sources, then per alpha the masked mixture and reconstructions."""
    kinds = _mixture_columns(subject.model)
    titles = ["subordinate", "dominant"]
    cols: list[list[torch.Tensor]] = [[*to_unit(x_sub, mean, std)], [*to_unit(x_dom, mean, std)]]
    for a in alphas:
        out = reconstruct_mixture(subject.model, x_sub, x_dom, a, mask_ratio, noise)
        titles.append(f"mixture a={a:g}")
        cols.append([*to_unit(out["masked"], mean, std)])
        for k in kinds:
            titles.append({"sub": f"rec. sub a={a:g}", "dom": f"rec. dom a={a:g}", "rec": f"rec. a={a:g}"}[k])
            cols.append([*to_unit(out[k], mean, std)])
    panels = [[to_hwc(col[r]) for col in cols] for r in range(x_sub.shape[0])]
    return save_grid(panels, path, titles, title=f"{subject.label}: mixtures, mask {mask_ratio:g}")


def ablation_grid(subjects: list[Subject], x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float,
                  mask_ratio: float, noise: torch.Tensor, mean, std, path: Path) -> Path:
    """Figure 3: rows are pairs; columns the sources, the mixture, then each checkpoint's reconstructions."""
    titles = ["subordinate", "dominant", f"mixture a={alpha:g}"]
    cols = [[*to_unit(x_sub, mean, std)], [*to_unit(x_dom, mean, std)],
            [*to_unit((alpha * x_sub + (1 - alpha) * x_dom), mean, std)]]
    for s in subjects:
        out = reconstruct_mixture(s.model, x_sub, x_dom, alpha, mask_ratio, noise)
        for k in _mixture_columns(s.model):
            titles.append(f"{s.label}\n{NAMES[k]}")
            cols.append([*to_unit(out[k], mean, std)])
    panels = [[to_hwc(col[r]) for col in cols] for r in range(x_sub.shape[0])]
    return save_grid(panels, path, titles, title=f"same pairs, alpha {alpha:g}, mask {mask_ratio:g}")


def mask_ratio_figure(subject: Subject, x: torch.Tensor, ratios: list[float], seed: int, mean, std,
                      path: Path) -> Path:
    """Figure 4: rows are images; columns the image, then per mask ratio the masked input and reconstruction."""
    titles = ["image"]
    cols = [[*to_unit(x, mean, std)]]
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape[0], subject.model.arch.num_patches, generator=g).to(x.device)
    for r in ratios:
        out = reconstruct(subject.model, x, r, noise)
        titles += [f"masked {r:g}", f"rec. {r:g}"]
        cols += [[*to_unit(out["masked"], mean, std)], [*to_unit(out["rec"], mean, std)]]
    panels = [[to_hwc(col[i]) for col in cols] for i in range(x.shape[0])]
    return save_grid(panels, path, titles, title=f"{subject.label}: mask ratios")


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def attention_figure(subject: Subject, x: torch.Tensor, layer: int, mean, std, path: Path) -> Path:
    """Figure 5b: rows are images; columns the image, then the cls attention of each head over it."""
    maps = cls_attention(subject.model, x, layer).cpu()  # [N, heads, g, g]
    maps = maps / maps.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    imgs = to_unit(x, mean, std)
    heads = maps.shape[1]
    panels = [[to_hwc(imgs[i])] * (heads + 1) for i in range(x.shape[0])]
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
    paths = []
    decoders = [s for s in subjects if not getattr(s.model, "encoder_only", False)]
    for s in subjects:
        if s not in decoders:
            info(f"{s.path} holds only an encoder: no reconstruction figures for it", session.show_progress)
            continue
        paths.append(mixture_figure(s, x_sub, x_dom, cfg.separability.alphas, f.mask_ratio, noise, d.mean, d.std,
                                    out_dir / f"mixtures-{s.label}.png"))
        paths.append(mask_ratio_figure(s, x_sub, f.mask_ratios, cfg.seed, d.mean, d.std,
                                       out_dir / f"mask-ratios-{s.label}.png"))
    if decoders:
        paths.append(ablation_grid(decoders, x_sub, x_dom, f.alpha, f.mask_ratio, noise, d.mean, d.std,
                                   out_dir / "ablation-grid.png"))
    paths.append(weights_figure(subjects, out_dir / "weights.png"))
    for s in subjects:
        paths.append(attention_figure(s, x_sub, f.layer, d.mean, d.std, out_dir / f"attention-{s.label}.png"))
    info(f"figures: wrote {len(paths)} PNG files to {out_dir}", session.show_progress)
    return paths


def _unique_labels(subjects: list[Subject]) -> None:
    seen: dict[str, int] = {}
    for s in subjects:
        if s.label in seen:
            seen[s.label] += 1
            s.label = f"{s.label}-{seen[s.label]}"
        else:
            seen[s.label] = 1
