"""utils/recipes.config_from_dict: the one mapping -> config dataclass every trainer and pipeline uses, and the
flags cli/recipe_args derives from the same dataclasses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from bertkit.cli.recipe_args import add_field_flags, recipe_settings
from bertkit.errors import ConfigError
from bertkit.utils.recipes import config_from_dict, from_dict, parse_duration


@dataclass
class Inner:
    a: int = 1
    b: float = 0.5
    wait: float | None = field(default=None, metadata={"parse": parse_duration})


@dataclass
class Other:
    b: float = 0.0
    c: str = "x"


@dataclass
class Outer:
    name: str = "n"  # what it is called
    a: int = 0  # an outer field: a flat ``a`` is this one, not inner.a
    tags: list[str] = field(default_factory=list)
    layers: list[int] | None = None
    extra: dict = field(default_factory=dict)
    on: bool = False
    size: int = field(default=3, metadata={"help": "how big"})
    inner: Inner = field(default_factory=lambda: Inner(a=5))  # not Inner's own defaults


@dataclass
class Two:
    x: Inner = field(default_factory=Inner)
    y: Other = field(default_factory=Other)


def test_a_group_sits_on_the_outer_class_defaults_and_may_be_written_flat():
    assert config_from_dict(Outer, {}).inner == Inner(a=5)
    assert config_from_dict(Outer, {"inner": {"b": 2}}).inner == Inner(a=5, b=2.0)
    assert config_from_dict(Outer, {"b": 2}).inner == Inner(a=5, b=2.0)  # flat
    assert config_from_dict(Outer, {"b": 3, "inner": {"b": 2}}).inner.b == 3.0  # flat beats the block
    cfg = config_from_dict(Outer, {"a": 1})
    assert cfg.a == 1 and cfg.inner.a == 5  # the outer class's own field keeps its name
    assert config_from_dict(Outer, {"inner": None}).inner == Inner(a=5)  # an empty YAML block
    assert config_from_dict(Outer, {"inner": Inner(a=9)}).inner == Inner(a=9)  # an instance, as kwargs give it
    assert from_dict is config_from_dict


def test_parse_hooks_are_declared_on_the_field():
    assert config_from_dict(Outer, {"wait": "10m"}).inner.wait == 600.0
    assert config_from_dict(Outer, {"inner": {"wait": 90}}).inner.wait == 90.0  # not a string: no parsing
    with pytest.raises(ConfigError, match=r"inner\.wait: cannot read duration 'soon'"):
        config_from_dict(Outer, {"wait": "soon"})


def test_errors_name_the_dotted_key():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) nmae; known: .*inner\.\*"):
        config_from_dict(Outer, {"nmae": "x"})
    with pytest.raises(ConfigError, match=r"inner\.bogus"):
        config_from_dict(Outer, {"inner": {"bogus": 1}})
    with pytest.raises(ConfigError, match=r"inner\.a must be int"):
        config_from_dict(Outer, {"inner": {"a": "many"}})
    with pytest.raises(ConfigError, match=r"inner: expected a mapping"):
        config_from_dict(Outer, {"inner": 3})
    with pytest.raises(ConfigError, match=r"b is ambiguous: write it as x\.b or y\.b"):
        config_from_dict(Two, {"b": 1})
    assert config_from_dict(Two, {"c": "z", "a": 2}) == Two(x=Inner(a=2), y=Other(c="z"))


def test_the_engine_names_stay_importable():
    from bertkit.train import engine

    assert engine.config_from_dict is config_from_dict and engine.parse_duration is parse_duration


def parser_for(cls: type) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe"), p.add_argument("overrides", nargs="*")
    add_field_flags(p, cls)
    return p


def test_flags_come_from_the_fields():
    p = parser_for(Outer)
    args = p.parse_args(["--name", "m", "--a", "2", "--tags", "p", "--tags", "q", "--layers", "0,2", "--on",
                         "--extra", "k=1", "j=[1, 2]", "--b", "0.25", "--wait", "1h"])
    cfg = config_from_dict(Outer, recipe_settings(args, Outer))
    assert (cfg.name, cfg.a, cfg.tags, cfg.layers, cfg.on, cfg.extra) == ("m", 2, ["p", "q"], [0, 2], True,
                                                                          {"k": 1, "j": [1, 2]})
    assert cfg.inner == Inner(a=5, b=0.25, wait=3600.0)  # inner.a has no flag: --a is the outer field's
    text = p.format_help()
    assert "what it is called (default n)" in text and "how big (default 3)" in text and "Outer settings" in text
    assert "inner settings (also inner.KEY=VALUE)" in text
    with pytest.raises(SystemExit):
        p.parse_args(["--layers", "0,two"])


def test_flags_of_two_groups_sharing_a_name_are_left_to_key_value():
    p = parser_for(Two)
    assert "--b" not in p.format_help() and "--c" in p.format_help()
    args = p.parse_args(["y.b=2", "--c", "z"])
    assert config_from_dict(Two, recipe_settings(args, Two)).y == Other(b=2.0, c="z")
