"""Plain YAML recipes mapped 1:1 onto config dataclasses, with ``key=value`` overrides.

A recipe is a mapping whose keys are the dataclass's field names; a field that is itself a dataclass
(``training: TrainConfig``) is a nested mapping. No schema language: the dataclass *is* the schema, and
an unknown key or a value of the wrong type is an error naming the dotted key (``training.lr``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bertkit.errors import ConfigError

RECIPE_DIRS = (Path("recipes"), Path(__file__).resolve().parents[3] / "recipes")


def find_recipe(name_or_file: str) -> Path:
    """A YAML file path, or the name of a recipe in ./recipes or the repository's recipes/ folder."""
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"recipe file {p} not found")
        return p
    for d in RECIPE_DIRS:
        if (d / f"{name_or_file}.yaml").is_file():
            return d / f"{name_or_file}.yaml"
    known = sorted({f.stem for d in RECIPE_DIRS if d.is_dir() for f in d.glob("*.yaml")})
    raise ConfigError(f"no recipe named {name_or_file!r}; known: {', '.join(known) or 'none'}")


def load_recipe(name_or_file: str) -> dict[str, Any]:
    path = find_recipe(name_or_file)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of settings, got {type(d).__name__}")
    return d


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["training.lr=1e-4", "model.hidden_size=128"]`` -> a copy of ``d`` with those values (YAML-typed)."""
    out = _deep_copy(d)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. training.lr=1e-4)")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a group of settings")
        node[parts[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else d


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``, checking every key and type; nested dataclass fields recurse."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for k, v in d.items():
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = from_dict(hint, v or {}, f"{prefix}{k}.")
        else:
            kwargs[k] = check_value(prefix + k, v, hint)
    return cls(**kwargs)


def check_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints accepted for floats); else ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(key, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"setting {key} must be {_name(hint)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"setting {key} must be a list, got {value!r}")
        return [check_value(f"{key}[{i}]", x, args[0]) for i, x in enumerate(value)] if args else value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"setting {key} must be a mapping, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"setting {key} must be {_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
