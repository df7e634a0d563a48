"""Hugging Face ViTMAE folders <-> our MAE: configuration, parameter names, reading and writing.

A folder of ``ViTMAEForPreTraining`` or ``ViTMAEModel`` (``save_pretrained``, or a hub cache entry
``models--org--name`` / one of its snapshots) is read without ``transformers``: ``config.json`` gives
the architecture (the fields of :class:`~imae.models.mae.MAEArch`, as a dict) and the weights
(``model.safetensors``, sharded or not, or ``pytorch_model.bin``)
are renamed to the official MAE layout; q, k and v are concatenated into ``qkv``. Both transformers'
saved names (``vit.encoder.layer.N.attention.attention.query``, ``decoder.decoder_layers.N`` and
transformers 5's ``decoder.decoder_encoder.layer.N``) and its in-memory names (``vit.layers.N.attention.
q_proj``, ``mlp.fc1``) are understood. Writing uses the saved names that transformers 4 and 5 both load.

The computations agree (``tests/test_weights_interop.py``): HF adds the cls position embedding to the cls
token and masks by the argsort of ``noise`` exactly as the official MAE, its position embeddings are
stored weights (copied, not recomputed), and every one of its LayerNorms uses ``layer_norm_eps``. HF's
``interpolate_pos_encoding`` (other image sizes) has no counterpart here: the model takes
``image_size`` images only. Its ``mask_ratio`` is a training setting here (``train.mask_ratio``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from imae.atomic import write_atomic
from imae.checkpoints import safetensors_io
from imae.checkpoints.checkpoint import Checkpoint
from imae.checkpoints.files import read_pth
from imae.errors import CheckpointError

# ViTMAEConfig's defaults (transformers 4.40 - 5.x), for config.json files that leave fields out
HF_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3, qkv_bias=True,
    decoder_num_attention_heads=16, decoder_hidden_size=512, decoder_num_hidden_layers=8,
    decoder_intermediate_size=2048, mask_ratio=0.75, norm_pix_loss=False)

# per block: our name -> transformers' saved name; then the other names transformers uses for it
_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
          "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_BLOCK_ALIASES = {"attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                  **{hf: ours for ours, hf in _BLOCK.items()}}
_QKV = ("query", "key", "value")
_QKV_ALIASES = {**{f"attention.attention.{n}": i for i, n in enumerate(_QKV)},
                **{f"attention.{n}_proj": i for i, n in enumerate("qkv")}}
# outside the blocks: our name -> transformers' name without the "vit." / "decoder." prefix
_ENCODER = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
            "patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm"}
_DECODER = {k: k for k in ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_norm", "decoder_pred")}
_ENC_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_DEC_LAYER = re.compile(r"^decoder_(?:encoder\.layer|layers)\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------------------------
# configuration


def arch_from_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """A ViTMAE ``config.json`` (as a dict) -> MAEArch's fields; a one-line CheckpointError for what we cannot
    run."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source} holds a JSON {type(config).__name__}, not an object of settings; it is "
                              f"not a Hugging Face model configuration: restore the model's config.json")
    c = {**HF_DEFAULTS, **config}
    kind = c.get("model_type")
    if kind != "vit_mae":
        what = ", ".join(c.get("architectures") or []) or "unknown architecture"
        raise CheckpointError(f"{source} describes a Hugging Face {kind!r} model ({what}), not ViTMAE; imae reads "
                              f"ViTMAEForPreTraining and ViTMAEModel folders")
    img, patch = _square(c["image_size"], "image_size", source), _square(c["patch_size"], "patch_size", source)
    for name in _SIZES:
        _positive(c[name], name, source)
    if isinstance(c["layer_norm_eps"], bool) or not isinstance(c["layer_norm_eps"], (int, float)) \
            or not c["layer_norm_eps"] > 0:
        raise CheckpointError(f"{source}: layer_norm_eps={_short(c['layer_norm_eps'])} must be a positive number")
    if c["hidden_act"] != "gelu" or not c["qkv_bias"]:
        raise CheckpointError(f"{source}: hidden_act={c['hidden_act']!r}, qkv_bias={c['qkv_bias']}; imae's ViT "
                              f"blocks are exact GELU with q/k/v biases")
    ratio = c["intermediate_size"] / c["hidden_size"]
    if c["decoder_intermediate_size"] != int(c["decoder_hidden_size"] * ratio):
        raise CheckpointError(f"{source}: the decoder's MLP ratio ({c['decoder_intermediate_size']}/"
                              f"{c['decoder_hidden_size']}) differs from the encoder's ({ratio:g}); imae uses one")
    return dict(img_size=img, patch_size=patch, in_chans=c["num_channels"], embed_dim=c["hidden_size"],
                depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                decoder_embed_dim=c["decoder_hidden_size"], decoder_depth=c["decoder_num_hidden_layers"],
                decoder_num_heads=c["decoder_num_attention_heads"], mlp_ratio=ratio,
                norm_pix_loss=bool(c["norm_pix_loss"]), layer_norm_eps=float(c["layer_norm_eps"]))


def config_from_arch(arch: dict[str, Any], encoder_only: bool = False, mask_ratio: float = 0.75) -> dict[str, Any]:
    """The ``config.json`` of ``arch`` (MAEArch's fields, ``MAEArch.to_dict()``) for ViTMAEForPreTraining (or
    ViTMAEModel when ``encoder_only``)."""
    a = arch
    return {
        "architectures": ["ViTMAEModel" if encoder_only else "ViTMAEForPreTraining"], "model_type": "vit_mae",
        "hidden_size": a["embed_dim"], "num_hidden_layers": a["depth"], "num_attention_heads": a["num_heads"],
        "intermediate_size": int(a["embed_dim"] * a["mlp_ratio"]), "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": a["layer_norm_eps"],
        "image_size": a["img_size"], "patch_size": a["patch_size"], "num_channels": a["in_chans"], "qkv_bias": True,
        "decoder_num_attention_heads": a["decoder_num_heads"], "decoder_hidden_size": a["decoder_embed_dim"],
        "decoder_num_hidden_layers": a["decoder_depth"],
        "decoder_intermediate_size": int(a["decoder_embed_dim"] * a["mlp_ratio"]), "mask_ratio": mask_ratio,
        "norm_pix_loss": a["norm_pix_loss"], "dtype": "float32"}


# the settings that are counts or sizes: positive integers
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels",
          "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
          "decoder_intermediate_size")


def _square(value: Any, name: str, source: str) -> int:
    if isinstance(value, (list, tuple)) and value:
        if len({repr(v) for v in value}) != 1:
            raise CheckpointError(f"{source}: {name}={_short(list(value))} is not square; imae models take square "
                                  f"images")
        value = value[0]
    return _positive(value, name, source)


def _positive(value: Any, name: str, source: str) -> int:
    """``value`` if it is a positive integer (2.0 counts as 2), else a one-line CheckpointError."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: {name}={_short(value)} must be a positive integer; the file is damaged or "
                              f"not a ViTMAE configuration")
    return value


def _short(value: Any, limit: int = 40) -> str:
    """A JSON value for a message, cut to ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# parameter names


def to_ours(hf_sd: dict[str, torch.Tensor], source: str = "the Hugging Face weights") -> dict[str, torch.Tensor]:
    """transformers' ViTMAE state dict (either naming) -> the official MAE layout (encoder only if it is)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for key, value in hf_sd.items():
        name, part = _our_name(key)
        if name is None:
            unknown.append(key)
        elif part is None:
            out[name] = value
        else:
            qkv.setdefault(name, {})[part] = value
    for name, parts in qkv.items():
        if len(parts) != 3:
            raise CheckpointError(f"{source}: {name} lacks {', '.join(_QKV[i] for i in range(3) if i not in parts)}")
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    if unknown:
        raise CheckpointError(f"{source} holds {len(unknown)} parameter(s) that are not ViTMAE's, e.g. "
                              f"{', '.join(unknown[:4])}")
    return out


def _our_name(key: str) -> tuple[str | None, int | None]:
    """One transformers key -> (our key, None) or (our qkv key, 0|1|2 for q|k|v); (None, None) if unknown."""
    stem, dot, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        stem, dot, leaf = key, "", ""
    if stem.startswith("vit."):
        stem = stem[len("vit."):]
    prefix, table, pattern = "", _ENCODER, _ENC_LAYER
    if stem.startswith("decoder."):
        stem, prefix, table, pattern = stem[len("decoder."):], "decoder_", _DECODER, _DEC_LAYER
    for ours, theirs in table.items():
        if stem == theirs:
            return ours + dot + leaf, None
    m = pattern.match(stem)
    if m is None:
        return None, None
    block = f"{prefix}blocks.{m.group(1)}."
    if m.group(2) in _QKV_ALIASES:
        return block + "attn.qkv" + dot + leaf, _QKV_ALIASES[m.group(2)]
    if m.group(2) in _BLOCK_ALIASES:
        return block + _BLOCK_ALIASES[m.group(2)] + dot + leaf, None
    return None, None


def to_hf(sd: dict[str, torch.Tensor], encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """Our (official-layout) MAE state dict -> transformers' saved names (ViTMAEModel's when ``encoder_only``).

    Returns fresh contiguous tensors (q, k and v are copies of the slices of ``qkv``)."""
    enc = "" if encoder_only else "vit."
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        stem, dot, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):
            stem, dot, leaf = key, "", ""
        parts = stem.split(".")
        if stem in _ENCODER:
            out[enc + _ENCODER[stem] + dot + leaf] = value
        elif stem in _DECODER:
            if not encoder_only:
                out["decoder." + stem + dot + leaf] = value
        elif parts[0] in ("blocks", "decoder_blocks") and len(parts) > 2:
            if parts[0] == "decoder_blocks" and encoder_only:
                continue
            base = (f"{enc}encoder.layer.{parts[1]}." if parts[0] == "blocks"
                    else f"decoder.decoder_layers.{parts[1]}.")
            inner = ".".join(parts[2:])
            if inner == "attn.qkv":
                for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{base}attention.attention.{name}{dot}{leaf}"] = chunk
            elif inner in _BLOCK:
                out[base + _BLOCK[inner] + dot + leaf] = value
            else:
                raise CheckpointError(f"{key} has no Hugging Face ViTMAE counterpart")
        else:
            raise CheckpointError(f"{key} has no Hugging Face ViTMAE counterpart")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# folders


def resolve_folder(path: Path) -> Path:
    """A hub cache entry ``models--org--name`` -> its snapshot (``refs/main``, else the only one); else ``path``."""
    snaps = path / "snapshots"
    if (path / "config.json").is_file() or not snaps.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
        return snaps / ref.read_text().strip()
    found = sorted(p for p in snaps.iterdir() if p.is_dir())
    if len(found) != 1:
        raise CheckpointError(f"{path} is a Hugging Face cache entry with {len(found)} snapshots and no refs/main; "
                              f"pass one of {snaps}/<revision>")
    return found[0]


def load_folder(path: Path) -> Checkpoint:
    """A ViTMAE folder as a Checkpoint (format ``hf``; entries ``model`` in the official layout, ``kind``
    ``"mae"``, ``arch``, and config.json's ``mask_ratio``, which an export keeps)."""
    folder = resolve_folder(Path(path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} looks like a Hugging Face model folder but has no config.json; imae "
                              f"reads the architecture from it: copy the model's config.json there")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not text
        raise CheckpointError(f"cannot read {config_file} ({e})") from None
    arch = arch_from_config(config, str(config_file))
    sd = to_ours(_read_weights(folder), f"{folder}")
    entries = {"model": sd, "kind": "mae", "arch": arch,
               "mask_ratio": float(config.get("mask_ratio", HF_DEFAULTS["mask_ratio"]))}
    return Checkpoint.of(entries, folder, "hf")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = list(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read {index} ({type(e).__name__}: {e}); it is not a weight index") from None
        for name in names:  # a shard is a file of this folder: never a path that leads out of it
            if not isinstance(name, str) or not name or "\\" in name or PurePosixPath(name).is_absolute() \
                    or ".." in PurePosixPath(name).parts:
                raise CheckpointError(f"refusing {index}: it names the shard {_short(name, 300)}, which is not a file "
                                      f"inside {folder}; shards must be plain file names of the model folder")
        return [folder / s for s in sorted(set(names))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder} has a config.json but no weights (model.safetensors or pytorch_model.bin)")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (named by {folder / 'model.safetensors.index.json'})")
        sd.update(safetensors_io.read(f)[0] if f.suffix == ".safetensors" else read_pth(f)["model"])
    return sd


def save_folder(sd: dict[str, torch.Tensor], arch: dict[str, Any], folder: Path, encoder_only: bool = False,
                mask_ratio: float = 0.75) -> list[Path]:
    """Write ``config.json`` and ``model.safetensors`` that ``ViTMAEForPreTraining.from_pretrained`` (or
    ``ViTMAEModel``'s, ``encoder_only``) loads with no missing or unexpected keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    safetensors_io.write(to_hf(sd, encoder_only), weights)
    config = folder / "config.json"
    write_atomic(config, json.dumps(config_from_arch(arch, encoder_only, mask_ratio), indent=2) + "\n")
    return [config, weights]
