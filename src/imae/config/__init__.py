"""Typed configuration: dataclasses with meaningful defaults, YAML presets, ``--set key=value`` overrides.

- ``tree``: what every configuration shares (presets, resolution, type coercion, YAML files, validation helpers);
- ``loop``: ``LoopConfig``, the training loop's settings of both ``train:`` and ``finetune:``;
- ``pretrain``: ``Config`` of ``imae pretrain`` (imported here, as ``imae.config.Config``);
- ``evaluate``: ``EvalConfig`` of the evaluation commands; ``finetune``: ``FinetuneConfig`` of ``imae finetune``.

A configuration is resolved in this order: dataclass defaults -> preset file (``configs/<name>.yaml``,
which may name a ``base`` preset it extends) -> the common command-line flags -> ``--set`` overrides.
The resolved configuration is written to every run directory as ``config.yaml``.
"""

from imae.config.loop import LoopConfig, validate_loop
from imae.config.pretrain import Config, DataConfig, IMAEConfig, ModelConfig, TrainConfig, build_config
from imae.config.tree import (
    CONFIG_DIR,
    assign,
    from_dict,
    list_presets,
    load_config,
    load_preset,
    parse_set,
    plain,
    preset_label,
    preset_path,
    preset_tree,
    resolve,
    save_config,
)

__all__ = ["CONFIG_DIR", "Config", "DataConfig", "IMAEConfig", "LoopConfig", "ModelConfig", "TrainConfig",
           "assign", "build_config", "from_dict", "list_presets", "load_config", "load_preset", "parse_set",
           "plain", "preset_label", "preset_path", "preset_tree", "resolve", "save_config",
           "validate_loop"]
