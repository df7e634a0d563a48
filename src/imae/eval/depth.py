"""Which encoder blocks an evaluation reads (``features.layers``, ``--layers``), and the per-layer results.

A layer is a block of the encoder, numbered 1 (the first) to ``depth`` (the last); its features are that
block's output with the encoder's final norm applied, as the encoder's own output is the last block's
(:meth:`imae.models.mae.MaskedAutoencoder.encode_layers`). ``last`` (the default) reads only the encoder's
output, and the result file is exactly what it was before layers existed. Any other choice adds, to the
results of the deepest layer asked for (kept at the top level, so that readers of one-layer results read
them), ``"layer"`` (that layer), ``"depth"`` (the encoder's block count) and ``"layers"``: one entry per layer,
``{"<k>": the results at block k}``.
"""

from __future__ import annotations

from typing import Any

from imae.config.evaluate import check_layers_spec as check_spec
from imae.errors import ConfigError

LAST = "last"


def parse_layers(spec: Any, depth: int) -> list[int]:
    """``features.layers`` of an encoder of ``depth`` blocks -> sorted block numbers (1-based, ``depth`` = last)."""
    items = check_spec(spec).split(",")
    if items == ["all"]:
        return list(range(1, depth + 1))
    layers = sorted({depth if v == LAST else int(v) for v in items})
    if layers[-1] > depth:
        raise ConfigError(f"features.layers asks for block {layers[-1]} but the encoder has {depth} blocks "
                          f"(1 to {depth}, or last)")
    return layers


def is_last_only(layers: list[int], depth: int) -> bool:
    return layers == [depth]


def combine(entries: dict[int, dict[str, Any]], depth: int) -> dict[str, Any]:
    """Per-layer ``results`` -> one ``results``: the only entry as it is when it is the last block's, else the
    deepest layer's entry at the top level plus ``layer``, ``depth`` and ``layers`` (one entry per layer)."""
    layers = sorted(entries)
    if is_last_only(layers, depth):
        return entries[depth]
    deepest = layers[-1]
    return {**entries[deepest], "layer": deepest, "depth": depth,
            "layers": {str(k): entries[k] for k in layers}}


def layers_kw(layers: list[int], depth: int) -> dict[str, Any]:
    """The extraction's ``layers`` argument: none for the last block alone (the encoder's output, extracted as
    before layers existed)."""
    return {} if is_last_only(layers, depth) else {"layers": layers}


def by_layer(features: Any, layers: list[int]) -> dict[int, Any]:
    """An extraction's result as {block: Features} (one Features: the only block asked for)."""
    return features if isinstance(features, dict) else {layers[-1]: features}


def layer_entries(results: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A result's per-layer entries, {block: results}; a one-layer result (no ``layers``) gives {} (its depth
    is not recorded)."""
    return {int(k): v for k, v in (results.get("layers") or {}).items()}
