"""The machinery every configuration class shares: preset files, resolution, type coercion, YAML files,
and the validation helpers whose messages must read the same in every section.

A configuration is a dataclass (``imae.config.pretrain.Config``, ``imae.config.evaluate.EvalConfig``,
``imae.config.finetune.FinetuneConfig``) with a ``validate()`` method. It is resolved in this order:
dataclass defaults -> preset file (``configs/<name>.yaml``, which may name a ``base`` preset it extends)
-> the common command-line flags -> ``--set key=value`` overrides.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from imae.atomic import write_atomic
from imae.errors import ConfigError, short

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

# what a preset, a saved configuration or a --set value may expand to: YAML aliases share one node, which
# grows 9x per level of an alias bomb once expanded; a real configuration holds a few hundred values
MAX_YAML_VALUES = 10_000
MAX_YAML_DEPTH = 32
SEED_MAX = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; the evaluation also seeds with seed + 1


# ----------------------------------------------------------------------------------------------
# values in messages


# ----------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at ``MAX_YAML_DEPTH`` levels of nesting (before Python's recursion limit,
    which takes seconds to reach) and whose merge keys (``<<: [*a, *a]``, copied into each mapping as it is built)
    may not grow a mapping past ``MAX_YAML_VALUES`` entries."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH + 1:
                raise _TooLarge
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        if len(node.value) > MAX_YAML_VALUES:
            raise _TooLarge


class _TooLarge(Exception):
    pass


class TooLargeError(ConfigError):
    """YAML that expands past ``MAX_YAML_VALUES`` values or ``MAX_YAML_DEPTH`` levels."""


def load_yaml(text: str, what: str) -> Any:
    """The value of YAML ``text`` (safe tags only), refused in one line (``what`` names the source) when it is
    not YAML or expands to more than ``MAX_YAML_VALUES`` values or ``MAX_YAML_DEPTH`` levels."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {short(str(e).splitlines()[0], 200)}") from None
    except (_TooLarge, RecursionError):
        data = _TooLarge
    if data is _TooLarge or not _bounded(data):
        raise TooLargeError(f"{what} expands to more than {MAX_YAML_VALUES} values or {MAX_YAML_DEPTH} levels "
                          f"(YAML aliases or merge keys repeating a value?); a configuration holds a few hundred: "
                          f"write the values out") from None
    return data


def _bounded(data: Any) -> bool:
    """Whether ``data`` expanded (a shared value counted at every place it appears) stays within the limits;
    the walk stops at the first value past them, so an alias bomb costs at most ``MAX_YAML_VALUES`` steps."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
            return False
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            count += len(value)  # the keys
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
    return True


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
    raise ConfigError(f"unknown preset {short(name)}; available: {', '.join(list_presets())} "
                      f"(or pass a path to a .yaml file)")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested dict of a preset, with its ``base`` presets merged underneath."""
    if name in _seen:
        raise ConfigError(f"preset {short(name)} extends itself through {' -> '.join(_seen)}")
    path = preset_path(name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read preset {path}: {short(str(e), 200)}") from None
    data = load_yaml(text, f"preset {path}")
    if data is None or data == {}:
        raise ConfigError(f"preset {path} is empty: it would train the defaults; write its settings (e.g. "
                          f"'base: digits-mae' and the keys that differ), or leave --preset out for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of settings ('key: value' lines), got "
                          f"{_kind(data)} {short(data, 60)}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"preset {path}: base must name a preset (a name or a .yaml path), got {short(base)}")
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
            raise ConfigError(f"preset {short(preset)} has key {short(key)}, which is neither an evaluation nor a "
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
        raise ConfigError(f"--set expects key=value, got {short(item)}")
    key, raw = item.split("=", 1)
    try:
        value = load_yaml(raw, f"the --set value of {short(key.strip(), 80)}") if raw.strip() else None
    except TooLargeError:
        raise
    except ConfigError:
        value = raw  # not YAML: the text itself (a string key's value)
    return key.strip(), value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, converting and checking every value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping ('key: value' lines), "
                          f"got {_kind(data)} {short(data, 60)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= 80 else short(unknown[0], 80)
        raise ConfigError(f"unknown configuration key '{prefix}{key}'; valid keys "
                          f"under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if is_dataclass(hint):
            section = data[f.name]  # an empty section ("train:") keeps the defaults; 0, [] or "" are refused
            kwargs[f.name] = from_dict(hint, {} if section is None else section, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, f"{prefix}{f.name}")
    return cls(**kwargs)


class Settings:
    """Base of a command's whole configuration (a dataclass): ``to_dict`` gives the plain tree that
    ``config.yaml``, checkpoints and result files hold."""

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


def save_config(cfg: Any, path: Path) -> None:
    """``config.yaml``: the configuration as plain YAML, written atomically."""
    write_atomic(path, yaml.safe_dump(plain(asdict(cfg)), sort_keys=False))


def load_config(path: Path, cls: type) -> Any:
    """Read a saved ``config.yaml`` into ``cls`` (e.g. the pre-training ``Config``)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read configuration {path}: {short(str(e), 200)}") from None
    data = load_yaml(text, f"configuration {path}")
    return from_dict(cls, {} if data is None else data)


# ----------------------------------------------------------------------------------------------
# validation: one function per message, so that every section words it the same way


def check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {short(device)}")


def at_least(section: str, obj: Any, names: Iterable[str], minimum: float, unset: str = "") -> None:
    """``<section>.<name> must be at least <minimum>`` for each of ``names`` of ``obj`` (None: unset, passes;
    ``unset`` says what null means, e.g. "null: all"). NaN fails."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= minimum:
            raise ConfigError(f"{_dotted(section, name)} must be at least {minimum}"
                              f"{f' (or {unset})' if unset else ''}, got {short(value)}")


def positive(section: str, obj: Any, names: Iterable[str], unset: str = "") -> None:
    """``<section>.<name> must be positive`` for each of ``names`` of ``obj`` (None passes). NaN fails."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{_dotted(section, name)} must be positive{f' (or {unset})' if unset else ''}, "
                              f"got {short(value)}")


def fraction(section: str, obj: Any, names: Iterable[str], top: bool = False) -> None:
    """``<section>.<name> must lie in [0, 1)`` (``top``: [0, 1]) for each of ``names`` of ``obj``. NaN fails."""
    for name in names:
        value = getattr(obj, name)
        if not (0.0 <= value <= 1.0 if top else 0.0 <= value < 1.0):
            raise ConfigError(f"{_dotted(section, name)} must lie in [0, 1{']' if top else ')'}, got {short(value)}")


def _dotted(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def check_scale(key: str, scale: tuple[float, float]) -> None:
    """A random-resized-crop area range: 0 < lo <= hi <= 1."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{key} must satisfy 0 < lo <= hi <= 1, got {short(list(scale))}")


def check_seed(key: str, value: int) -> None:
    """A seed that torch.manual_seed, NumPy and the evaluation's seed + 1 all take."""
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key} must be an integer from 0 to 2^63 - 1, got {short(value)}")


def check_mask_ratio(key: str, ratio: float, num_patches: int, img_size: int, patch_size: int,
                     unmasked: bool = False, source: str = "") -> None:
    """A ratio that leaves at least one visible patch of ``num_patches`` and, unless ``unmasked`` is allowed
    (0 means: the encoder sees every patch), at least one masked patch. The MAE keeps
    ``int(num_patches * (1 - ratio))`` patches visible and its loss is over the masked ones. ``source``: where
    the ratio came from when not from ``key`` itself (said in the message)."""
    visible = int(num_patches * (1 - ratio))
    what = f"{key}={ratio:g}{f' ({source})' if source else ''}"
    where = f"of the {num_patches} patches of a {img_size}-pixel image in {patch_size}-pixel patches"
    top = f"{math.floor((1 - 1 / num_patches) * 1000) / 1000:g}"  # rounded down: it leaves a patch visible
    if visible < 1:
        raise ConfigError(f"{what} leaves no patch visible {where}; set {key} to at most {top}")
    if visible >= num_patches and not (unmasked and ratio == 0):
        raise ConfigError(f"{what} leaves no patch masked {where}, and the loss is over masked patches; set {key} "
                          f"above 0 and at most {top} (MAE's is 0.75)")


def check_max_steps(section: str, value: int | None) -> None:
    if value is not None and not value >= 1:
        raise ConfigError(f"{section}.max_steps must be at least 1 (or null: no limit), got {short(value)}")


# ----------------------------------------------------------------------------------------------
# helpers


def assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted`` "a.b"; a section that is missing or empty becomes a mapping, one that
    holds something else (``train: 5`` in a preset) is refused rather than replaced."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        elif not isinstance(nxt, dict):
            section = ".".join(parts[:i + 1])
            raise ConfigError(f"{section} must be a mapping ('key: value' lines) to set {short(dotted)} in it, got "
                              f"{_kind(nxt)} {short(nxt, 60)}; fix {section} in the preset or --set")
        node = nxt
    node[parts[-1]] = value


def _kind(value: Any) -> str:
    """"a list", "a string", ... for messages about a value of the wrong shape."""
    names = {list: "a list", tuple: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             dict: "a mapping"}
    return next((n for t, n in names.items() if isinstance(value, t)), f"a {type(value).__name__}")


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
        raise ConfigError(errors[0] if errors else f"{key} cannot be {short(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {short(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {short(value)}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {short(value)}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {short(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {short(value)}")
    if hint is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                pass
            except OverflowError:  # an integer past 1.8e308
                number = math.inf
        if number is None:
            raise ConfigError(f"{key} must be a number, got {short(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {short(value)}")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {short(value)}")
    raise ConfigError(f"{key}: unsupported type {hint}")
