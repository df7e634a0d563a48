"""``imae export``: any checkpoint we read, written as a Hugging Face folder, a timm ViT or an official MAE .pth.

The input is anything a checkpoint is taken as (run directory, ``.pth``, ``.safetensors``, Hugging Face
ViTMAE folder). An i-MAE becomes a vanilla MAE first: its encoder, the shared decoder, and the dominant
branch as ``decoder_embed`` (the subordinate one for a ``sub`` student; ``IMAE.mae_state_dict``). An
encoder-only input is written encoder-only (``ViTMAEModel`` for ``hf``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imae import checkpoints
from imae.atomic import save_atomic, write_reason
from imae.checkpoints import hf
from imae.checkpoints.files import with_checksum
from imae.checkpoints.timm_export import save_timm
from imae.errors import ConfigError, OutputError
from imae.models.imae import IMAE
from imae.models.loading import model_from_checkpoint

TARGETS = {"hf": "", "timm": ".safetensors", "mae": ".pth"}  # target -> required suffix of --output


def export(spec: str | Path, to: str, output: str | Path, num_heads: int | None = None) -> list[Path]:
    """Write checkpoint ``spec`` as ``to`` (hf | timm | mae) at ``output``; returns the files written."""
    output = Path(output)
    if to not in TARGETS:
        raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if TARGETS[to] and output.suffix != TARGETS[to]:
        raise ConfigError(f"--to {to} writes a {TARGETS[to]} file; name --output like {output.stem}{TARGETS[to]}")
    if output.exists() and (output.is_file() or any(output.iterdir())):
        raise ConfigError(f"{output} already exists; remove it or choose another --output")
    ck = checkpoints.load(spec)
    model = model_from_checkpoint(ck, **({"num_heads": num_heads} if num_heads else {}))
    encoder_only = not ck.has_decoder
    sd = model.mae_state_dict() if isinstance(model, IMAE) else model.state_dict()
    encoder = {k: v for k, v in sd.items() if k in set(model.encoder_keys())}
    if encoder_only:
        sd = encoder
    # config.json's mask_ratio: the run's train.mask_ratio, a Hugging Face input's own, else the MAE default
    train = (ck.config or {}).get("train")
    mask_ratio = float(train.get("mask_ratio", 0.75)) if isinstance(train, dict) else float(ck.get("mask_ratio", 0.75))
    before = _existing(output, to)
    try:
        if to == "timm":
            return save_timm(encoder, model.arch.to_dict(), output)
        if to == "mae":
            output.parent.mkdir(parents=True, exist_ok=True)
            # the official layout under "model"; "arch" (ignored by the official code) keeps heads and eps
            save_atomic(with_checksum({"model": sd, "kind": "mae", "arch": model.arch.to_dict()}), output)
            return [output]
        return hf.save_folder(sd, model.arch.to_dict(), output, encoder_only=encoder_only, mask_ratio=mask_ratio)
    except OSError as e:  # a full disk, a read-only folder: remove what this export began
        made = _existing(output, to) - before
        if to == "hf" and output.is_dir() and output not in made:  # it was empty before
            made |= set(output.iterdir())
        for p in made:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise OutputError(f"could not export to {output} ({write_reason(e)}); nothing was exported; free space or "
                          f"fix permissions, or choose another --output") from None


def _existing(output: Path, to: str) -> set[Path]:
    """What an export to ``output`` writes that exists now: the file (and timm's .json) or the folder with the
    folders above it (hf, mae)."""
    paths = [output, output.with_name(f"{output.stem}.timm.json")] if to == "timm" else [output]
    paths += list(output.absolute().parents)
    return {p for p in paths if p.exists()}
