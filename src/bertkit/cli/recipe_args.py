"""The one shape of every recipe-driven command (pretrain, finetune, distill, train-embeddings, train-reranker;
compress too, whose recipe is a list of steps):

    bertkit COMMAND [--recipe NAME|FILE] -o DIR [--FIELD VALUE ...] [key=value ...]

Settings are layered, each on top of the one before (later wins):

    the config class's defaults  <  the recipe  <  key=value overrides  <  flags given on the command line

A recipe is a YAML file, or the name of one in recipes/KIND/, whose keys are the config dataclass's fields. An
override is YAML-typed and dotted for a group (``training.lr=1e-4``); a group's keys may also be written flat
(``lr=1e-4``). The flags are derived from the dataclass fields (``--lr`` for ``training.lr``, ``--train-file``
for ``train_file``): a new field is a new flag, with no table to keep in step. A flag that is not given leaves
the setting to the recipe. ``--config FILE`` is a deprecated alias of ``--recipe`` for one release.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bertkit.errors import ConfigError
from bertkit.train.optim import SCHEDULES
from bertkit.train.trainer import PRECISIONS
from bertkit.utils.output_paths import check_output_dir
from bertkit.utils.recipes import config_from_dict, read_settings

# what TrainConfig's annotations cannot say, for every trainer's training flags
TRAIN_FLAGS: dict[str, dict] = {
    "schedule": dict(choices=SCHEDULES), "precision": dict(choices=PRECISIONS),
    "time_budget": dict(help="stop training after this long, e.g. 90s, 10m, 1h"),
    "device": dict(help="cpu, cuda, cuda:1 (default: CUDA when present)"),
}
PRECEDENCE = ("Settings, later wins: the config's defaults < the recipe < key=value overrides\n"
              "(training.lr=1e-4, or flat: lr=1e-4) < flags given on the command line.")


def usage(recipe_required: bool = False, before: str = "", resume: bool = True, fields: bool = True) -> str:
    """The usage line every recipe-driven command shares (``before``: positionals ahead of the flags)."""
    recipe = "--recipe NAME|FILE" if recipe_required else "[--recipe NAME|FILE]"
    run = "[--resume | --overwrite]" if resume else "[--overwrite]"
    flags = " [--FIELD VALUE ...]" if fields else ""
    return f"%(prog)s {before}{recipe} -o DIR {run} [--print-config]{flags} [key=value ...]"


def add_recipe_args(p: argparse.ArgumentParser, kind: str, names: str, *, required: bool = False,
                    legacy_config: bool = False, resume: bool = True,
                    output: str = "run directory: the model, checkpoints, metrics",
                    example: str = "training.lr=1e-4 or lr=1e-4") -> None:
    """``--recipe``, the run flags (``-o``, ``--resume``, ``--overwrite``, ``--print-config``) and the positional
    ``key=value`` overrides. ``names``: the shipped recipes of ``kind`` (the recipes/ subfolder) for the help;
    ``legacy_config``: also the deprecated ``--config FILE``, for the commands that had it."""
    folder = f"recipes/{kind}/" if kind else "recipes/"
    g = p.add_argument_group("recipe and run", PRECEDENCE)
    g.add_argument("--recipe", metavar="NAME|FILE", required=required,
                   help=f"a YAML file, or the name of a recipe in {folder} ({names})")
    if legacy_config:
        g.add_argument("--config", metavar="FILE", help="deprecated alias of --recipe, removed in the next release")
    g.add_argument("--output", "-o", required=True, metavar="DIR", help=output)
    if resume:
        g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    g.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    g.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    # "+" made optional rather than "*": a "*" positional can be consumed, empty, together with an earlier
    # positional (compress's MODEL), and overrides after the flags would then be rejected as unrecognized.
    overrides = g.add_argument("overrides", nargs="+", default=[], metavar="key=value",
                               help=f"override one setting, e.g. {example} (YAML-typed)")
    overrides.required = False


def add_field_flags(p: argparse.ArgumentParser, cls: type, flags: dict[str, dict] | None = None,
                    skip: tuple[str, ...] = ()) -> None:
    """One option per field of config dataclass ``cls`` and of its groups (``--lr`` for ``training.lr``), a help
    section per class; ``recipe_settings`` puts the ones given on top of the recipe.

    The option comes from the annotation: int, float, str take one value; bool is ``--x`` / ``--no-x``; a list
    of numbers one comma-separated value (``0,2,4``); a list of strings one value per use of the option (repeat
    it); a mapping ``KEY=VALUE ...``; a field with a parse hook (``time_budget``) takes the raw string. The help
    is the field's ``metadata["help"]``, else its trailing comment, plus the class's default. ``flags``: argparse
    keywords per field that the annotation cannot say (``aliases``, choices, a better help)."""
    where = dict(p.get_default("field_flags") or {})
    for title, section_cls, fields, path, defaults in _sections(cls):
        section = p.add_argument_group(title)
        comments, hints = field_comments(section_cls), typing.get_type_hints(section_cls)
        for f in fields:
            if f.name in skip:
                continue
            kw = {**_option(hints[f.name], f), **(flags or {}).get(f.name, {})}
            option_strings = [f"--{f.name.replace('_', '-')}", *kw.pop("aliases", ())]
            text = kw.pop("help", None) or f.metadata.get("help") or comments.get(f.name, "")
            section.add_argument(*option_strings, dest=f.name, default=None,
                                 help=_help(text, kw, getattr(defaults, f.name)), **kw)
            where[f.name] = (*path, f.name)
    p.set_defaults(field_flags=where)


def add_recipe_command(sub: argparse._SubParsersAction, name: str, help: str, doc: str | None, cls: type,
                       flags: dict[str, dict], kind: str, recipes: str, run: Callable[[argparse.Namespace], int], *,
                       required: bool = False, legacy_config: bool = False,
                       skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """One recipe-driven subcommand: ``--recipe``, the run flags, ``key=value`` overrides and one flag per field of
    ``cls`` (``flags``: what an annotation cannot say, by field name); ``run(args)`` runs it."""
    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage=usage(recipe_required=required))
    add_recipe_args(p, kind, recipes, required=required, legacy_config=legacy_config)
    add_field_flags(p, cls, flags, skip=skip)
    p.set_defaults(func=run)
    return p


def settings_or_print(args: argparse.Namespace, config_from: Callable[[argparse.Namespace], Any]) -> Any | None:
    """A recipe-driven command's settings, ``--output`` checked first (before any work, naming the path); None when
    ``--print-config`` asked for them, which are then printed (the command exits 0 without running)."""
    check_output_dir(args.output)
    cfg = config_from(args)
    if args.print_config:
        print_config(cfg)
        return None
    return cfg


def recipe_settings(args: argparse.Namespace, cls: type, kind: str = "") -> dict[str, Any]:
    """The settings a command runs with, for ``cls.from_dict``: the recipe (``--recipe``, or the deprecated
    ``--config``) < its ``key=value`` overrides < the flags given on the command line."""
    recipe = args.recipe
    if getattr(args, "config", None):
        if recipe:
            raise ConfigError("give --recipe alone: --config is its deprecated alias, not a second recipe")
        print(f"bertkit {getattr(args, 'command', '')}: warning: --config is deprecated and goes in the next "
              f"release; use --recipe {args.config}", file=sys.stderr)
        recipe = args.config
    d = read_settings(cls, recipe, args.overrides, kind)
    for dest, path in (getattr(args, "field_flags", None) or {}).items():
        value = getattr(args, dest)
        if value is not None:
            _put(d, path, value)
    return d


def config_from_args(args: argparse.Namespace, cls: type, kind: str = "") -> Any:
    """``cls`` (its own ``from_dict``, which may validate, else ``config_from_dict``) from ``recipe_settings``."""
    d = recipe_settings(args, cls, kind)
    return cls.from_dict(d) if hasattr(cls, "from_dict") else config_from_dict(cls, d)


def print_config(cfg: Any) -> None:
    print(json.dumps(dataclasses.asdict(cfg), indent=2))


# ---- helpers ----------------------------------------------------------------------------------------------------
def field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` -> {name: comment}, read from the source of ``cls`` and its bases.

    The class body is found in its module's text with a regular expression, not ``inspect.getsource``: that parses
    the module's AST, which CPython 3.11 cannot do from two threads at once (``main`` may run in several).
    """
    out: dict[str, str] = {}
    for c in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(c):
            continue
        try:
            text = Path(inspect.getsourcefile(c) or "").read_text(encoding="utf-8")
        except (OSError, TypeError):  # no source (a frozen app, a class made at run time): no help text
            continue
        body = re.search(rf"^class {c.__name__}\b[^\n]*\n(.*?)(?=^\S|\Z)", text, re.MULTILINE | re.DOTALL)
        if body:
            out.update(re.findall(r"^    (\w+)\s*:[^#\n]*#\s*(.+?)\s*$", body.group(1), re.MULTILINE))
    return out


def _sections(cls: type) -> list[tuple[str, type, list[dataclasses.Field], tuple[str, ...], Any]]:
    """(help title, class, fields, path, default instance): ``cls``'s own fields, then each group's. A group's
    field gets a flag of its own name unless an outer field or another group has that name too."""
    defaults = cls()
    hints = typing.get_type_hints(cls)
    groups = [f.name for f in dataclasses.fields(cls) if _is_group(hints[f.name])]
    own = [f for f in dataclasses.fields(cls) if f.name not in groups]
    names = {g: {f.name for f in dataclasses.fields(hints[g])} for g in groups}
    out = [(f"{cls.__name__} settings", cls, own, (), defaults)]
    for g in groups:
        clash = {f.name for f in own}.union(*(names[h] for h in groups if h != g))
        out.append((f"{g} settings (also {g}.KEY=VALUE)", hints[g],
                    [f for f in dataclasses.fields(hints[g]) if f.name not in clash], (g,), getattr(defaults, g)))
    return out


def _help(text: str, kw: dict[str, Any], default: Any) -> str:
    """The help of one flag: what the field is, how to give several values, its default."""
    if kw.get("action") == "append" and "repeat" not in text:
        text = f"{text}; repeat the flag for several" if text else "repeat the flag for several"
    shown = _show(default)
    if shown and "default" not in text:
        text = f"{text} (default {shown})" if text else f"default {shown}"
    return text.replace("%", "%%")  # argparse formats help with %


def _show(value: Any) -> str:
    """A default as the help shows it ("" for none)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "" if value is None or value == {} else str(value)


def _is_group(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _option(hint: Any, f: dataclasses.Field) -> dict[str, Any]:
    """argparse keywords for one field, from its annotation (``X | None`` read as ``X``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if f.metadata.get("parse"):
        return {"type": str}  # read by the field's parse hook in config_from_dict, where errors name the key
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list and args and args[0] in (int, float):
        return {"type": _comma_list(args[0]), "metavar": "A,B,..."}
    if origin is list:
        return {"action": "append"}
    if origin is dict or hint is dict:
        return {"action": _KeyValues, "nargs": "+", "metavar": "KEY=VALUE"}
    return {"type": hint if hint in (int, float, str) else str}


def _comma_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, e.g. 0,2,4; "
                                             f"got {text!r}") from None
    return parse


class _KeyValues(argparse.Action):
    """``KEY=VALUE ...`` -> {KEY: VALUE} (YAML-typed): a mapping field, replaced whole."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        out = {}
        for text in values:
            key, sep, raw = text.partition("=")
            if not sep or not key:
                raise argparse.ArgumentError(self, f"expected KEY=VALUE, e.g. hidden_size=256; got {text!r}")
            out[key] = yaml.safe_load(raw)
        setattr(namespace, self.dest, out)


def _put(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        d = d.setdefault(part, {})  # read_settings made every group given a dict
    d[path[-1]] = value
