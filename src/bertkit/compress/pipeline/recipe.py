"""The recipe: ``CompressRecipe`` (the schema, 1:1 with the YAML), reading one, and ``steps.K.param=value``.

A recipe is read by the one reader of ``bertkit.utils.recipes`` (a YAML file, or a name in recipes/compress/);
``key=value`` overrides go on top, ``steps.K.param=value`` into step K. Everything a recipe alone can get wrong is
an error before any work: its own settings, every step's kind and parameters (``steps.py``), and their order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bertkit.compress.pipeline.steps import STEP_KINDS, Step, parse_step
from bertkit.errors import ConfigError
from bertkit.train.finetune import DataConfig
from bertkit.utils.recipes import apply_overrides, config_from_dict
from bertkit.utils.recipes import load_recipe as read_recipe

SPLITS = ("train", "dev", "test")


@dataclass
class CompressRecipe(DataConfig):  # data: as for fine-tuning; none given, the model's own (finetune_config.json)
    max_length: int | None = None  # None: the model's own
    seed: int = 42  # training steps (the split seed is the model's, see the package docstring)
    eval_split: str = "dev"  # what each step is evaluated on; the report also gives test for every step
    throughput_texts: int = 256  # texts of the eval split used to time each step
    device: str | None = None  # every step and measurement; None: CUDA when present
    steps: list[dict[str, Any]] = field(default_factory=list)  # each {"<kind>": {params}}, run in order

    def validate(self) -> list[Step]:
        """Check everything a recipe alone can get wrong; returns the parsed steps."""
        if self.eval_split not in SPLITS:
            raise ConfigError(f"eval_split={self.eval_split!r}: choose one of {', '.join(SPLITS)}")
        if self.throughput_texts < 1:
            raise ConfigError(f"throughput_texts={self.throughput_texts}: must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: must be >= 2")
        if self.dataset and self.train_file:
            raise ConfigError("give either dataset or train_file, not both")
        if (self.eval_file or self.test_file) and not self.train_file:
            raise ConfigError("eval_file / test_file need train_file")
        if self.test_file and not self.eval_file:
            raise ConfigError("test_file needs eval_file (without it train_file is split 80/10/10)")
        return parse_steps(self)


def parse_steps(recipe: CompressRecipe) -> list[Step]:
    """Every step's kind and settings, and their order (nothing may follow a step whose ``why_last`` says why)."""
    if not recipe.steps:
        raise ConfigError("the recipe has no steps: give steps: [{kind: {params}}, ...] with kinds "
                          + ", ".join(STEP_KINDS))
    steps = [parse_step(i, entry) for i, entry in enumerate(recipe.steps, start=1)]
    last: Step | None = None
    for step in steps:
        if last is not None:
            raise ConfigError(f"{step.where}: {last.why_last()}")
        if step.why_last() is not None:
            last = step
    return steps


def override_steps(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``steps.K.param=value``: a parameter of step K (1-based, as in the report); other keys as ``apply_overrides``."""
    plain = [o for o in overrides if not o.startswith("steps.")]
    d = apply_overrides(d, plain)
    steps = list(d.get("steps") or [])
    for item in overrides:
        if not item.startswith("steps."):
            continue
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 3 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(steps):
            raise ConfigError(f"override {item!r}: step overrides are steps.K.param=value with K a step number "
                              f"1..{len(steps)}")
        k = int(parts[1])
        entry = steps[k - 1]
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ConfigError(f"override {item!r}: step {k} is not a {{kind: {{params}}}} mapping")
        kind, params = next(iter(entry.items()))
        steps[k - 1] = {kind: apply_overrides(dict(params or {}), [".".join(parts[2:]) + sep + raw])}
    d["steps"] = steps
    return d


def load_recipe(path_or_dict: str | os.PathLike[str] | dict[str, Any] | CompressRecipe,
                overrides: Sequence[str] = ()) -> CompressRecipe:
    """A validated ``CompressRecipe`` from a YAML file, a recipe name (recipes/compress/NAME.yaml), a mapping or a
    recipe; ``overrides``: ``key=value`` (``seed=1``, ``steps.2.sparsity=0.9``). Every error comes before any work."""
    if isinstance(path_or_dict, CompressRecipe):
        d = asdict(path_or_dict)
    elif isinstance(path_or_dict, dict):
        d = path_or_dict
    else:
        d = read_recipe(str(path_or_dict), kind="compress")
    recipe = config_from_dict(CompressRecipe, override_steps(d, overrides))
    recipe.validate()
    return recipe
