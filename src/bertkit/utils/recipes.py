"""Plain YAML recipes mapped 1:1 onto config dataclasses, with ``key=value`` overrides.

A recipe is a mapping whose keys are the dataclass's field names; a field that is itself a dataclass
(``training: TrainConfig``) is a nested mapping, a *group*. No schema language: the dataclass *is* the schema,
and an unknown key or a value of the wrong type is an error naming the dotted key (``training.lr``).

Every trainer and pipeline config is built by ``config_from_dict``; ``read_settings`` layers a recipe and its
``key=value`` overrides first (the command line puts its flags on top: cli/recipe_args.py).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bertkit.errors import ConfigError

RECIPE_DIRS = (Path("recipes"), Path(__file__).resolve().parents[3] / "recipes")
T = TypeVar("T")


def find_recipe(name_or_file: str, kind: str = "") -> Path:
    """A YAML file path, or the name of a recipe in ./recipes/KIND or the repository's recipes/KIND folder
    (``kind``: "" for pretraining and fine-tuning recipes, "compress" for compression pipelines, ...)."""
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"recipe file {p} not found")
        return p
    folders = [d / kind if kind else d for d in RECIPE_DIRS]
    for d in folders:
        if (d / f"{name_or_file}.yaml").is_file():
            return d / f"{name_or_file}.yaml"
    known = sorted({f.stem for d in folders if d.is_dir() for f in d.glob("*.yaml")})
    what = f"{kind} recipe" if kind else "recipe"
    raise ConfigError(f"no {what} named {name_or_file!r}; known: {', '.join(known) or 'none'}")


def load_recipe(name_or_file: str, kind: str = "") -> dict[str, Any]:
    """The mapping of settings in a recipe file or named recipe (see ``find_recipe``)."""
    path = find_recipe(name_or_file, kind)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else f"{path}"
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if d is None:  # an empty file (or only comments): no settings
        return {}
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


def read_settings(cls: type, name_or_file: str | None, overrides: Sequence[str] = (), kind: str = "") -> dict:
    """The settings of a recipe (none: ``{}``) with ``key=value`` overrides on top, for ``config_from_dict(cls, ...)``.

    Flat keys of a group are moved into its block first (``lr`` -> ``training.lr``), so an override beats the
    recipe whichever way either writes the key."""
    d = load_recipe(name_or_file, kind) if name_or_file else {}
    return group_flat_keys(cls, apply_overrides(group_flat_keys(cls, d), list(overrides)))


# ---- mapping -> dataclass ---------------------------------------------------------------------------------------
def config_from_dict(cls: type[T], d: Mapping[str, Any] | None, prefix: str = "", base: T | None = None) -> T:
    """Config dataclass ``cls`` from a plain mapping (a YAML recipe with overrides, or keyword arguments).

    - every key must be a field, and every value fit the field's annotation (ints are accepted for floats):
      otherwise a ConfigError names the dotted key (``training.lr``);
    - a group (a field that is itself a dataclass, ``training: TrainConfig``) takes a mapping whose values sit
      on top of ``cls()``'s own default for that group, not the group type's defaults: pretraining's training
      defaults differ from fine-tuning's. A group's keys may also sit flat at the top level when they are not
      the outer class's own fields (``lr: 1e-4``, as fine-tuning recipes have them); flat beats the block;
    - a field declared with ``field(metadata={"parse": fn})`` reads string values through ``fn`` first, e.g.
      durations ``time_budget: 10m``.

    ``base``: the instance the settings sit on (default: ``cls()`` when ``cls`` has groups, else none).
    """
    d = group_flat_keys(cls, _mapping(d, prefix), prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        groups = sorted(n for n in fields if _is_group(hints[n]))
        known = sorted(prefix + n for n in fields if n not in groups) + [f"{prefix}{g}.*" for g in groups]
        flat = f" ({', '.join(groups)} settings may also sit flat)" if groups else ""
        raise ConfigError(f"unknown setting(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(known)}{flat}")
    if base is None and any(_is_group(hints[n]) for n in fields):
        base = cls()  # the groups' defaults are the outer class's, not the group types'
    kwargs = {}
    for name, f in fields.items():
        if _is_group(hints[name]):
            kwargs[name] = config_from_dict(hints[name], d.get(name), f"{prefix}{name}.", getattr(base, name))
        elif name in d:
            kwargs[name] = _read_value(prefix + name, d[name], hints[name], f.metadata.get("parse"))
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


from_dict = config_from_dict  # the older name (compress/pipeline.py imports it)


def group_flat_keys(cls: type, d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of ``d`` with each flat key of a group (``lr``, not a field of ``cls``) moved into its block
    (``training: {lr: ...}``), where it beats a value the block already had; every block given is a dict."""
    hints = typing.get_type_hints(cls)
    own = [f.name for f in dataclasses.fields(cls)]  # in field order: an error lists groups as the class does
    groups = {n: {f.name for f in dataclasses.fields(hints[n])} for n in own if _is_group(hints[n])}
    out = {k: _mapping(v, f"{prefix}{k}.") if k in groups else v for k, v in d.items()}
    for key in [k for k in out if k not in own]:
        homes = [g for g, names in groups.items() if key in names]
        if len(homes) > 1:
            raise ConfigError(f"setting {prefix}{key} is ambiguous: write it as "
                              f"{' or '.join(f'{prefix}{g}.{key}' for g in homes)}")
        if homes:
            g = homes[0]
            out[g] = {**out.get(g, {}), key: out.pop(key)}
    return out


def _is_group(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _mapping(value: Any, prefix: str) -> dict[str, Any]:
    """A group's settings: a mapping, None (an empty YAML block) or an instance of the group's dataclass."""
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of settings, got {value!r}")
    return dict(value)


def _read_value(key: str, value: Any, hint: Any, parse: Callable[[str], Any] | None) -> Any:
    if parse is not None and isinstance(value, str):
        try:
            value = parse(value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"setting {key}: {e}") from None
    return check_value(key, value, hint)


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


# ---- field parsers (declared with field(metadata={"parse": ...})) --------------------------------------------------
def parse_duration(text: str | float | None) -> float | None:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 90s, 10m or 1.5h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
