"""The machinery every configuration class shares: preset files, resolution, type coercion, YAML files,
and the validation helpers whose messages must read the same in every section.

A configuration is a dataclass (``imae.config.pretrain.Config``, ``imae.config.evaluate.EvalConfig``,
``imae.config.finetune.FinetuneConfig``) with a ``validate()`` method. It is resolved in this order:
dataclass defaults -> preset file (``configs/<name>.yaml``, which may name a ``base`` preset it extends)
-> the common command-line flags -> ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from imae.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


# ----------------------------------------------------------------------------------------------
# presets and overrides


def preset_path(name: str) -> Path:
    """The YAML file of a preset: a name in ``configs/`` or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if p.is_file():
        return p
    raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())} "
                      f"(or pass a path to a .yaml file)")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested dict of a preset, with its ``base`` presets merged underneath."""
    if name in _seen:
        raise ConfigError(f"preset {name!r} extends itself through {' -> '.join(_seen)}")
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(load_preset(base, _seen + (name,)), data)


def preset_tree(preset: str, cls: type, foreign: type | None = None) -> dict[str, Any]:
    """The parts of preset ``preset`` that configure ``cls``.

    Without ``foreign``: the whole preset (``from_dict`` rejects the keys ``cls`` does not know). With
    ``foreign``, the configuration whose presets ``cls`` also reads (evaluation reading a pre-training
    preset, which names the data set of an official checkpoint): the keys of ``cls`` pass, of the ``data``
    section only those ``cls``'s data section knows; keys only ``foreign`` knows are dropped, and keys that
    neither knows are errors, so typos do not pass silently.
    """
    tree = load_preset(preset)
    if foreign is None:
        return tree
    own = {f.name for f in fields(cls)}
    foreign_keys = {f.name for f in fields(foreign)}
    data_cls = typing.get_type_hints(cls).get("data")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "data" and isinstance(value, dict) and is_dataclass(data_cls):
            data_keys = {f.name for f in fields(data_cls)}
            out["data"] = {k: v for k, v in value.items() if k in data_keys}
        elif key in own:
            out[key] = value
        elif key not in foreign_keys:
            raise ConfigError(f"preset {preset!r} has key {key!r}, which is neither an evaluation nor a "
                              f"pre-training setting; valid: {', '.join(sorted(own))}")
    return out


def resolve(tree: dict[str, Any], overrides: dict[str, Any] | None, sets: list[str] | None, cls: type) -> Any:
    """Apply flat ``overrides`` (dotted keys), then ``--set`` items, to ``tree``; build and validate ``cls``."""
    for key, value in (overrides or {}).items():
        assign(tree, key, value)
    for item in sets or []:
        key, value = parse_set(item)
        assign(tree, key, value)
    return from_dict(cls, tree).validate()


def preset_label(preset: str) -> str:
    """The name a run records for its preset: the name, or a YAML file's stem."""
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


def parse_set(item: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; values are read as YAML scalars or lists."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, converting and checking every value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown configuration key '{prefix}{unknown[0]}'; valid keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if is_dataclass(hint):
            kwargs[f.name] = from_dict(hint, data[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, f"{prefix}{f.name}")
    return cls(**kwargs)


class Settings:
    """Base of a command's whole configuration (a dataclass): ``to_dict`` gives the plain tree that
    ``config.yaml``, checkpoints and result files hold."""

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(plain(asdict(cfg)), sort_keys=False))


def load_config(path: Path, cls: type) -> Any:
    """Read a saved ``config.yaml`` into ``cls`` (e.g. the pre-training ``Config``)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read configuration {path}: {e}") from None
    return from_dict(cls, data)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------
# validation: one function per message, so that every section words it the same way


def check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")


def at_least(section: str, obj: Any, names: Iterable[str], minimum: float) -> None:
    """``<section>.<name> must be at least <minimum>`` for each of ``names`` of ``obj`` (None: unset, passes)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{section}.{name} must be at least {minimum}, got {value}")


def check_max_steps(section: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{section}.max_steps must be at least 1 (or null: no limit), got {value}")


# ----------------------------------------------------------------------------------------------
# helpers


def assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plain(obj: Any) -> Any:
    """Tuples to lists so that YAML stays plain."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key} cannot be {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")
