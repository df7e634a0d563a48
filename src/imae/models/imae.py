"""i-MAE: reconstruct both source images of a linear mixture from one masked encoding.

Data flow of ``forward`` (METHOD.md section 2), N batch, L patches, K visible, D / D' widths:

    mix      m = alpha * x_sub + (1 - alpha) * x_dom                     [N, C, H, W]
    encode   h = E(visible patches of m)                                  [N, 1+K, D]
    split    z_sub = W_sub h + b_sub,  z_dom = W_dom h + b_dom            [N, 1+K, D'] each
    decode   one shared MAE decoder, both branches in one batched pass    [N, L, p*p*C] each
    distil   frozen MAE teacher T on the clean images under the same mask:
             t = T.decoder_embed(T.encode(x; mask)),  MSE(adapter(z), t)
    loss     w_rs*rec_sub + w_rd*rec_dom + w_ts*distill_sub + w_td*distill_dom

The state dict holds the MAE's encoder/decoder names minus ``decoder_embed``, plus the two branch maps
``decoder_embed_sub`` / ``decoder_embed_dom`` (and ``distill_adapter`` when the teacher's decoder width
differs). The teacher is not part of the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from imae.checkpoints.state import load_state_dict, strip_prefixes
from imae.data.mixing import check_alpha as _check_alpha
from imae.data.mixing import mix
from imae.models.mae import MAEArch, MaskedAutoencoder, masked_mse

BRANCHES = ("two", "sub")


@dataclass(frozen=True)
class IMAEOptions:
    """What an i-MAE adds to its MAE architecture; stored in checkpoints to rebuild the model."""

    branches: str = "two"  # two: subordinate and dominant branches; sub: the 2022 demo's single branch
    distill: bool = True  # latent distillation from a frozen MAE teacher
    w_rec_sub: float = 1.0
    w_rec_dom: float = 1.0
    w_distill_sub: float = 1.0
    w_distill_dom: float = 1.0
    teacher_dim: int | None = None  # the teacher's decoder width when it differs from the student's

    def __post_init__(self) -> None:
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be 'two' or 'sub', got {self.branches!r}")


class IMAE(MaskedAutoencoder):
    """The i-MAE student: an MAE whose latent is split into subordinate and dominant branches."""

    kind = "imae"

    def __init__(self, arch: MAEArch, options: IMAEOptions | None = None,
                 teacher: MaskedAutoencoder | None = None, **option_kwargs: Any) -> None:
        options = options or IMAEOptions(**option_kwargs)
        super().__init__(arch)
        self.options = options
        del self.decoder_embed  # replaced by the two branch maps
        self.decoder_embed_sub = nn.Linear(arch.embed_dim, arch.decoder_embed_dim)
        self.decoder_embed_dom = nn.Linear(arch.embed_dim, arch.decoder_embed_dim) if self.two_branches else None
        width = options.teacher_dim
        self.distill_adapter = (nn.Linear(arch.decoder_embed_dim, width)
                                if options.distill and width and width != arch.decoder_embed_dim else None)
        for m in (self.decoder_embed_sub, self.decoder_embed_dom, self.distill_adapter):
            if m is not None:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self._teacher: list[MaskedAutoencoder] = []  # a list keeps it out of modules, state dict and DDP
        if teacher is not None:
            self.attach_teacher(teacher)

    @property
    def two_branches(self) -> bool:
        return self.options.branches == "two"

    @property
    def teacher(self) -> MaskedAutoencoder | None:
        return self._teacher[0] if self._teacher else None

    def attach_teacher(self, teacher: MaskedAutoencoder) -> None:
        """Freeze ``teacher`` (no gradients, eval mode) and use it for distillation."""
        t = teacher.arch
        if (t.img_size, t.patch_size) != (self.arch.img_size, self.arch.patch_size):
            raise ValueError(f"the teacher sees {t.img_size}px images in {t.patch_size}px patches, the student "
                             f"{self.arch.img_size}px in {self.arch.patch_size}px; the mask must cover the same "
                             f"patches: use a teacher of the same image and patch size")
        want = self.options.teacher_dim or self.arch.decoder_embed_dim
        if t.decoder_embed_dim != want:
            raise ValueError(f"the teacher's decoder width is {t.decoder_embed_dim}, the student was built for "
                             f"{want}; build the student with teacher_dim={t.decoder_embed_dim}")
        teacher.eval().requires_grad_(False)
        self._teacher[:] = [teacher]

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() move the (unregistered) teacher with the student
        super()._apply(fn, recurse)
        for t in self._teacher:
            t._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------------------------------
    # data flow

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder output h [N, 1+K, D] -> (z_sub, z_dom) [N, 1+K, D'] each (z_dom None for 'sub')."""
        z_dom = self.decoder_embed_dom(h) if self.decoder_embed_dom is not None else None
        return self.decoder_embed_sub(h), z_dom

    def decode_branches(self, z_sub: torch.Tensor, z_dom: torch.Tensor | None,
                        ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both branches through the shared decoder in one batched pass -> predictions [N, L, p*p*C] each."""
        if z_dom is None:
            return self.decode_tokens(z_sub, ids_restore), None
        pred = self.decode_tokens(torch.cat([z_sub, z_dom]), torch.cat([ids_restore, ids_restore]))
        return pred.chunk(2)

    @torch.no_grad()
    def teacher_latents(self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor) -> torch.Tensor:
        """Teacher targets for clean ``images`` [M, C, H, W] under the masks of ``noise`` [M, L] -> [M, 1+K, D'_t]."""
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError("distillation is on but no teacher is attached; pass teacher= or attach_teacher()")
        teacher.eval()
        if torch.compiler.is_compiling():  # inductor cannot trace inference tensors; no_grad is equivalent here
            latent, _, _ = teacher.forward_encoder(images, mask_ratio, noise)
            return teacher.decoder_embed(latent).float()
        with torch.inference_mode():
            latent, _, _ = teacher.forward_encoder(images, mask_ratio, noise)
            target = teacher.decoder_embed(latent)
        # a normal tensor again, usable as a loss target; fp32 also from a bf16 teacher (or under autocast)
        return target.clone() if target.dtype == torch.float32 else target.float()

    def forward(self, x_sub: torch.Tensor, x_dom: torch.Tensor, alpha: float | torch.Tensor,
                mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                check_alpha: bool = True) -> dict[str, torch.Tensor]:
        """x_sub, x_dom: [N, C, H, W]; alpha: float or [N], the weight of x_sub (in (0, 0.5]).

        ``check_alpha=False`` skips the range check (two host syncs for a tensor) for alphas that come
        from an :class:`~imae.data.mixing.AlphaSampler`, which validated its range once.

        Returns ``loss``, each present term (``rec_sub``, ``rec_dom``, ``distill_sub``, ``distill_dom``),
        ``pred_sub`` / ``pred_dom`` [N, L, p*p*C], ``mask`` [N, L] (1 = removed) and ``mixture``.
        """
        if check_alpha:
            _check_alpha(alpha)
        o = self.options
        n = x_sub.shape[0]
        if noise is None:  # drawn here so that the teacher sees exactly the student's mask
            noise = torch.rand(n, self.arch.num_patches, device=x_sub.device)
        mixture = mix(x_sub, x_dom, alpha)
        h, mask, ids_restore = self.forward_encoder(mixture, mask_ratio, noise)
        z_sub, z_dom = self.split(h)
        pred_sub, pred_dom = self.decode_branches(z_sub, z_dom, ids_restore)

        out: dict[str, torch.Tensor] = {"rec_sub": masked_mse(pred_sub, self.target(x_sub), mask)}
        if pred_dom is not None:
            out["rec_dom"] = masked_mse(pred_dom, self.target(x_dom), mask)
        if o.distill:
            if z_dom is None:
                t_sub = self.teacher_latents(x_sub, mask_ratio, noise)
                out["distill_sub"] = F.mse_loss(self._adapt(z_sub).float(), t_sub.float())
            else:
                t_sub, t_dom = self.teacher_latents(torch.cat([x_sub, x_dom]), mask_ratio,
                                                    torch.cat([noise, noise])).chunk(2)
                out["distill_sub"] = F.mse_loss(self._adapt(z_sub).float(), t_sub.float())
                out["distill_dom"] = F.mse_loss(self._adapt(z_dom).float(), t_dom.float())
        weights = {"rec_sub": o.w_rec_sub, "rec_dom": o.w_rec_dom,
                   "distill_sub": o.w_distill_sub, "distill_dom": o.w_distill_dom}
        loss = sum(weights[k] * v for k, v in out.items())
        result = {"loss": loss, **out, "pred_sub": pred_sub, "mask": mask, "mixture": mixture}
        if pred_dom is not None:
            result["pred_dom"] = pred_dom
        return result

    def _adapt(self, z: torch.Tensor) -> torch.Tensor:
        return self.distill_adapter(z) if self.distill_adapter is not None else z

    # ------------------------------------------------------------------------------------------
    # conversion to and from the vanilla MAE

    def load_mae_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "MAE checkpoint") -> None:
        """Start from an MAE: every shared weight, and both branch maps from its ``decoder_embed``."""
        sd = strip_prefixes(state_dict)
        if "decoder_embed.weight" not in sd:
            raise ValueError(f"{source} has no decoder_embed (an encoder-only release?); an i-MAE student "
                             f"needs a full MAE checkpoint")
        mapped = {k: v for k, v in sd.items() if not k.startswith("decoder_embed.")}
        for branch in ("decoder_embed_sub", "decoder_embed_dom") if self.two_branches else ("decoder_embed_sub",):
            mapped[f"{branch}.weight"] = sd["decoder_embed.weight"]
            mapped[f"{branch}.bias"] = sd["decoder_embed.bias"]
        load_state_dict(self, mapped, source=source, ignore=("distill_adapter.",))

    def mae_state_dict(self) -> dict[str, torch.Tensor]:
        """The student as a vanilla MAE state dict (``decoder_embed`` := the dominant branch, else the
        subordinate one): loads strictly into a MaskedAutoencoder of the same architecture."""
        sd = {k: v for k, v in self.state_dict().items()
              if not k.startswith(("decoder_embed_sub.", "decoder_embed_dom.", "distill_adapter."))}
        branch = "decoder_embed_dom" if self.two_branches else "decoder_embed_sub"
        sd["decoder_embed.weight"] = self.state_dict()[f"{branch}.weight"]
        sd["decoder_embed.bias"] = self.state_dict()[f"{branch}.bias"]
        return sd
