"""The compression pipeline: a recipe of steps run in order on a task model, every step saved, measured, reported.

    bertkit compress runs/bbc --recipe recipes/compress/distill-int8.yaml --output runs/bbc-distill-int8

A recipe is plain YAML, 1:1 with ``CompressRecipe``: the data (default: the data the model was trained on, from
its ``finetune_config.json``) and ``steps``, a list of ``{kind: {params}}`` run in order, each on the model the
step before it left:

  distill      a smaller student, the current model as teacher       DistillConfig fields (``compress/distill.py``)
  prune        gradual magnitude / oBERT pruning while fine-tuning    SparsityConfig fields + ``epochs``
  structured   heads and FFN neurons by Taylor importance, as fractions or down to a measured speedup
  drop_layers  whole layers removed
  lowrank      truncated-SVD factors of chosen Linears, then an optional short fine-tune
  quantize     int8 dynamic / static, or weight-only int8 / int4 (``compress/quantize.py``)

Every setting is checked before any work: kinds, parameters, the order (quantize and lowrank replace the float
``nn.Linear`` layers every other step works on, so nothing may follow them), layer ids against the model, the
data, the output directory.

Output, for the input model (step 0, "original") and each step k:

  DIR/step_<k>_<kind>/   the model: the HF task layout for float models (``bertkit evaluate/predict/serve`` read
                         it), ``save_lowrank`` for lowrank, ``save_compressed`` for quantize; training logs of the
                         step in its ``train/`` folder. Built in ``DIR/.step_<k>_<kind>.tmp`` and renamed when
                         complete, so a step directory is always a whole model.
  DIR/report.json, report.md, pareto.png   one row per step, rewritten after every step.

Each step's model is loaded back from its directory as it would be served (int8 modules for int8, weight-only
layers dequantized once to float) and measured: the task's main metric (``MAIN_METRIC``) on ``eval_split`` and on
test, the size on disk (the directory's files; not ``train/``), parameters, and engine tokens/s over the first
``throughput_texts`` texts of the eval split (tokenized once; median of 3 passes after a warm-up), with ratios to
step 0. A step that fails is recorded with its error, its directory is not left behind, and the pipeline stops
(``CompressionError``, which carries the report).

Splits: a built-in dataset (or a single training file) is split with the seed the model was trained with (its
``finetune_config.json`` / ``distill_config.json``), so test stays unseen; the recipe's ``seed`` drives training.

Sizes: a pruned float model is stored dense (HF layout), so pruning alone does not shrink the file; a later
quantize step stores every weight with >= 50% zeros as a bitmask + its nonzeros. Structured pruning rounds each
pruned FFN down to a multiple of 8 (``multiple_of``), the sizes the int8 kernels take.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bertkit.compress import distill as distill_mod
from bertkit.compress import lowrank, quantize, sparse, structured
from bertkit.data.features import Features, make_batch
from bertkit.data.tasks import TaskData
from bertkit.encoder import pick_device
from bertkit.errors import BertkitError, CheckpointError, ConfigError
from bertkit.task_model import MAIN_METRIC, TaskModel
from bertkit.train.engine import CURVE_FILE, METRICS_FILE, TrainConfig
from bertkit.train.finetune import DATA_FIELDS, DataConfig, FinetuneConfig, load_splits
from bertkit.utils.atomic import atomic_path, atomic_write_text
from bertkit.utils.recipes import RECIPE_DIRS, apply_overrides, find_recipe, from_dict
from bertkit.utils.recipes import load_recipe as read_recipe_file

log = logging.getLogger("bertkit")

STEP_KINDS = ("distill", "prune", "structured", "drop_layers", "lowrank", "quantize")
QUANTIZE_MODES = ("dynamic", "static", "weight_only")
SPLITS = ("train", "dev", "test")
# Set once for the whole pipeline: the split must be the teacher's, and every step runs where it is measured.
RECIPE_ONLY = ("teachers", "teacher_weights", *DATA_FIELDS, "max_length", "device")
REPORT_JSON, REPORT_MD, PARETO_PNG = "report.json", "report.md", "pareto.png"
TRAIN_LOGS = "train"  # a step's training logs, inside its directory (not counted in its size)
TIMED_PASSES = 3
TRAINING_CONFIGS = (distill_mod.CONFIG_FILE, "finetune_config.json")  # where a model's split seed is recorded


class CompressionError(BertkitError):
    """A pipeline step failed. ``report``: the report as written, the failed step's row last."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


# ---- the recipe ---------------------------------------------------------------------------------------------
@dataclass
class CompressRecipe(DataConfig):  # data: as for fine-tuning; none given, the model's own (finetune_config.json)
    max_length: int | None = None  # None: the model's own
    seed: int = 42  # training steps (the split seed is the model's, see the module docstring)
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


@dataclass
class StructuredStep:
    head_fraction: float = 0.0  # of all heads, least important first (every layer keeps one)
    neuron_fraction: float = 0.0  # of all FFN neurons
    target_speedup: float | None = None  # instead of fractions: prune until the engine measures this speedup
    speedup_step: float = 0.1  # fraction of the remaining heads and neurons pruned per measured step
    speedup_texts: int = 64  # eval-split texts timed per measured step
    multiple_of: int = 8  # FFN widths rounded down to a multiple (int8 GEMMs skip other sizes); 1: as pruned
    importance_batches: int = 8  # training batches the Taylor importance averages over
    batch_size: int = 16
    finetune_steps: int = 0  # a short fine-tune afterwards (0: none)
    lr: float = 5e-5

    def validate(self) -> None:
        fractions = self.head_fraction or self.neuron_fraction
        if self.target_speedup is not None and fractions:
            raise ConfigError("give target_speedup or head_fraction / neuron_fraction, not both")
        if self.target_speedup is None and not fractions:
            raise ConfigError("nothing to prune: give head_fraction and/or neuron_fraction, or target_speedup")
        for name in ("head_fraction", "neuron_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be in [0, 1)")
        checks = [("target_speedup", self.target_speedup is None or self.target_speedup > 1),
                  ("speedup_step", 0 < self.speedup_step < 1), ("speedup_texts", self.speedup_texts >= 1),
                  ("multiple_of", self.multiple_of >= 1),
                  ("importance_batches", self.importance_batches >= 1), ("batch_size", self.batch_size >= 1),
                  ("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0)]
        _fail_bad(self, checks)


@dataclass
class DropLayersStep:
    keep: list[int] = field(default_factory=list)  # layers kept (0-based, increasing), renumbered from 0
    finetune_steps: int = 0
    lr: float = 5e-5
    batch_size: int = 16

    def validate(self) -> None:
        if not self.keep:
            raise ConfigError("keep is empty: list the layers to keep, e.g. [0, 2, 4]")
        if self.keep != sorted(set(self.keep)) or self.keep[0] < 0:
            raise ConfigError(f"keep={self.keep}: layer ids must be >= 0 and increasing, each once")
        _fail_bad(self, [("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0),
                         ("batch_size", self.batch_size >= 1)])


@dataclass
class LowRankStep:
    layers: list[str] = field(default_factory=lambda: ["mlp_in", "mlp_out"])  # kinds or names (layers.3.mlp_in)
    energy: float = 0.9  # rank keeping this share of ||W||_F^2, where ranks gives none
    ranks: int | dict[str, int] | None = None
    finetune_steps: int = 0
    lr: float = 1e-4
    batch_size: int = 16
    only_factors: bool = False  # fine-tune the factors alone

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("layers is empty: name layer kinds (mlp_in, ...) or layers (layers.3.mlp_in)")
        for entry in self.layers:
            if not re.fullmatch(rf"(layers\.\d+\.)?({'|'.join(lowrank.LAYER_LINEARS)})", entry):
                raise ConfigError(f"layers: unknown layer {entry!r}; give one of {', '.join(lowrank.LAYER_LINEARS)} "
                                  "or a name like layers.3.mlp_in")
        ranks = self.ranks.values() if isinstance(self.ranks, dict) else [] if self.ranks is None else [self.ranks]
        _fail_bad(self, [("energy", 0 < self.energy <= 1), ("ranks", all(r >= 1 for r in ranks)),
                         ("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0),
                         ("batch_size", self.batch_size >= 1)])


@dataclass
class QuantizeStep:
    mode: str = "dynamic"  # dynamic | static (int8, activations too) | weight_only (int8 / int4 storage)
    bits: int = 8  # weight_only: 8 or 4; dynamic and static are int8
    group_size: int = 128  # weight_only (and embeddings): input columns per scale
    scale_dtype: str = "fp16"  # weight_only (and embeddings) scales
    embeddings: int | bool = False  # false, 8 or 4: the embedding tables too (quantize.quantize_embeddings)
    pooler: bool = False  # weight_only: the pooler too (the classifier always stays float)

    def validate(self) -> None:
        if self.mode not in QUANTIZE_MODES:
            raise ConfigError(f"mode={self.mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
        if self.bits not in quantize.BITS:
            raise ConfigError(f"bits={self.bits}: must be 8 or 4")
        if self.mode != "weight_only" and self.bits != 8:
            raise ConfigError(f"bits={self.bits}: {self.mode} quantization is int8; int4 is mode: weight_only")
        if self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size}: must be >= 1")
        if self.scale_dtype not in ("fp16", "fp32"):
            raise ConfigError(f"scale_dtype={self.scale_dtype!r}: fp16 or fp32")
        if self.embeddings is True or self.embeddings not in (False, 8, 4):
            raise ConfigError(f"embeddings={self.embeddings!r}: false, 8 or 4 (bits)")
        if self.embeddings and not hasattr(quantize, "quantize_embeddings"):
            raise ConfigError("embeddings: embedding quantization is not supported yet (this bertkit has no "
                              "quantize.quantize_embeddings); remove embeddings or set it to false")

    @property
    def what(self) -> str:
        return f"int{self.bits}"


def _fail_bad(cfg: Any, checks: list[tuple[str, bool]]) -> None:
    bad = [name for name, ok in checks if not ok]
    if bad:
        raise ConfigError("invalid setting(s): " + ", ".join(f"{n}={getattr(cfg, n)!r}" for n in bad))


@dataclass
class Step:
    """One parsed recipe step. number: 1-based (0 is the original model); config: the kind's settings."""

    number: int
    kind: str
    params: dict[str, Any]
    config: Any
    epochs: float | None = None  # prune: epochs instead of steps

    @property
    def label(self) -> str:
        c = self.config
        if self.kind == "distill":
            what = (f"layers {','.join(map(str, c.student_layers))}" if c.student_layers else
                    "config" if c.student_config else Path(c.student_model).name)
            return f"distill {what}"
        if self.kind == "prune":
            return f"prune {c.method} {c.sparsity * 100:g}%" + (f" B{c.block_size}" if c.block_size > 1 else "")
        if self.kind == "structured":
            if c.target_speedup is not None:
                return f"structured {c.target_speedup:g}x"
            return f"structured heads {c.head_fraction * 100:g}% neurons {c.neuron_fraction * 100:g}%"
        if self.kind == "drop_layers":
            return f"drop_layers keep {','.join(map(str, c.keep))}"
        if self.kind == "lowrank":
            return "lowrank " + (f"ranks {c.ranks}" if c.ranks is not None else f"energy {c.energy:g}")
        return f"quantize {c.what}" if c.mode == "weight_only" else f"quantize int8 {c.mode}"

    @property
    def where(self) -> str:
        return f"step {self.number} ({self.label})"

    @property
    def dirname(self) -> str:
        return f"step_{self.number}_{self.kind}"


def _parse_step(number: int, entry: Any) -> Step:
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise ConfigError(f"step {number}: each step is one mapping {{kind: {{params}}}}, e.g. "
                          f"{{quantize: {{mode: dynamic}}}}; got {entry!r:.100}")
    kind, params = next(iter(entry.items()))
    if kind not in STEP_KINDS:
        raise ConfigError(f"step {number}: unknown step kind {kind!r}; known: {', '.join(STEP_KINDS)}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ConfigError(f"step {number} ({kind}): its parameters must be a mapping, got {params!r:.100}")
    try:
        return _step_config(number, kind, dict(params))
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(f"step {number} ({kind}): {e}") from None


def _step_config(number: int, kind: str, params: dict[str, Any]) -> Step:
    nested = params.get("training") if isinstance(params.get("training"), dict) else {}
    fixed = sorted((set(params) | set(nested)) & (set(RECIPE_ONLY) | ({"seed"} if kind == "distill" else set())))
    if fixed:
        key = fixed[0]
        why = ("the teacher is the model before this step" if key.startswith("teacher") else
               "distill's seed also splits the data, so it is the model's own (the recipe's seed drives the other "
               "steps)" if key == "seed" else "set once in the recipe, for every step")
        raise ConfigError(f"{key}: {why}")
    if kind == "distill":
        # teachers: a stand-in until run time (the model the previous step saved)
        cfg = distill_mod.DistillConfig.from_dict({**params, "teachers": ["<the model before this step>"]})
        return Step(number, kind, params, cfg)
    if kind == "prune":
        rest = {k: v for k, v in params.items() if k != "epochs"}
        epochs = params.get("epochs")
        cfg = from_dict(sparse.SparsityConfig, rest)
        if epochs is not None:
            if "steps" in params:
                raise ConfigError("give steps or epochs, not both")
            if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
                raise ConfigError(f"epochs={epochs!r}: must be > 0")
            # the step count is known once the training set is: check the rest against a long run for now
            dataclasses.replace(cfg, steps=10**9).validate()
        else:
            cfg.validate()
        return Step(number, kind, params, cfg, float(epochs) if epochs is not None else None)
    cls = {"structured": StructuredStep, "drop_layers": DropLayersStep, "lowrank": LowRankStep,
           "quantize": QuantizeStep}[kind]
    cfg = from_dict(cls, params)
    cfg.validate()
    return Step(number, kind, params, cfg)


def parse_steps(recipe: CompressRecipe) -> list[Step]:
    """Every step's kind and settings, and their order (nothing may follow quantize or lowrank)."""
    if not recipe.steps:
        raise ConfigError("the recipe has no steps: give steps: [{kind: {params}}, ...] with kinds "
                          + ", ".join(STEP_KINDS))
    steps = [_parse_step(i, entry) for i, entry in enumerate(recipe.steps, start=1)]
    end: Step | None = None
    for step in steps:
        if end is not None:
            raise ConfigError(f"{step.where}: {_final_state(end)}")
        if step.kind in ("quantize", "lowrank"):
            end = step
    return steps


def _final_state(step: Step) -> str:
    if step.kind == "quantize":
        return (f"the model is already {step.config.what} ({step.where}); quantize changes the float Linear layers "
                "every step works on, so it comes last")
    return (f"the model is already low-rank factorised ({step.where}); its factored layers are not the float "
            "Linears other steps work on, so lowrank comes last")


def find_compress_recipe(name_or_file: str) -> Path:
    """A YAML file, or the name of a recipe in recipes/compress/ (int8, distill-int8, ...)."""
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return find_recipe(name_or_file)
    for d in RECIPE_DIRS:
        if (d / "compress" / f"{name_or_file}.yaml").is_file():
            return d / "compress" / f"{name_or_file}.yaml"
    known = sorted({f.stem for d in RECIPE_DIRS if (d / "compress").is_dir() for f in (d / "compress").glob("*.yaml")})
    raise ConfigError(f"no compression recipe named {name_or_file!r}; known: {', '.join(known) or 'none'}")


def _override_steps(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
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
        d = read_recipe_file(str(find_compress_recipe(str(path_or_dict))))
    recipe = from_dict(CompressRecipe, _override_steps(d, overrides))
    recipe.validate()
    return recipe


# ---- models on disk ---------------------------------------------------------------------------------------------
def model_format(directory: str | os.PathLike[str]) -> tuple[str, str | None]:
    """(format, quantized state) of a task model directory: format "hf", "lowrank" or "compressed"; state None
    for a float model, else what it is ("int8", "int4", "low-rank")."""
    d = Path(directory)
    f = d / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {f})")
    cfg = json.loads(f.read_text(encoding="utf-8"))
    section = cfg.get("quantization")
    if isinstance(section, dict) and section.get("format") == quantize.FORMAT:
        bits = section.get("bits")
        if not section.get("layers"):
            return "compressed", None
        return "compressed", f"int{min(bits) if isinstance(bits, list) else bits}"
    if isinstance(cfg.get(lowrank.LOWRANK_KEY), dict):
        return "lowrank", "low-rank"
    return "hf", None


def load_model(directory: str | os.PathLike[str], device: str | torch.device | None = None,
               served: bool = True) -> TaskModel:
    """A step's task model from its directory, whatever the format. served: as it is served (weight-only layers
    dequantized once to float Linears, int8 layers as int8 modules); False: as stored (WeightOnlyLinear)."""
    d = Path(directory)
    fmt, _ = model_format(d)
    if fmt == "compressed":
        # weight-only Linears dequantize the whole weight on every call: served, they are float once, at load
        kinds = {spec["kind"] for spec in _section(d)["layers"].values()} - {"embedding"}
        tm = quantize.load_compressed(d, device=device, dequantize=served and kinds == {"weight_only"})
    elif fmt == "lowrank":
        tm = lowrank.load_lowrank(d, device=device)
    else:
        tm = TaskModel.from_pretrained(d, device=device)
    if not isinstance(tm, TaskModel):
        raise CheckpointError(f"{d}: an encoder, not a task model (no bertkit_task.json); compress a fine-tuned model")
    return tm


def _section(d: Path) -> dict[str, Any]:
    return json.loads((d / "config.json").read_text(encoding="utf-8"))["quantization"]


def _save_model(tm: TaskModel, directory: Path, fmt: str) -> None:
    if fmt == "hf":
        tm.save_pretrained(directory)
    elif fmt == "lowrank":
        lowrank.save_lowrank(tm, directory)
    else:
        quantize.save_compressed(tm, directory)


def _own_training_config(model_dir: Path) -> dict[str, Any]:
    for name in TRAINING_CONFIGS:
        if (model_dir / name).is_file():
            return json.loads((model_dir / name).read_text(encoding="utf-8"))
    return {}


# ---- one pipeline run ---------------------------------------------------------------------------------------------
@dataclass
class _Run:
    recipe: CompressRecipe
    out: Path
    splits: dict[str, TaskData]
    data: dict[str, Any]  # the data fields, as distill takes them
    split_seed: int
    max_length: int
    device: torch.device
    metric: str
    current_dir: Path  # the last saved model: the teacher of a distill step
    cache: dict[tuple[str, int, int], Features] = field(default_factory=dict)

    def features(self, tm: TaskModel, split: str, n: int | None = None) -> Features:
        """Features of ``split`` (its first n examples) at the model's max_length, tokenized once per run."""
        data = self.splits[split]
        n = len(data) if n is None else min(n, len(data))
        key = (split, n, tm.max_length)
        if key not in self.cache:
            self.cache[key] = tm.featurize(data if n == len(data) else data.subset(range(n)))
        return self.cache[key]


def _resolve_data(recipe: CompressRecipe, model_dir: Path) -> tuple[dict[str, Any], int, str]:
    """(data fields, split seed, where they came from)."""
    own = _own_training_config(model_dir)
    own_seed = (own.get("training") or {}).get("seed")
    data = {k: getattr(recipe, k) for k in DATA_FIELDS}
    if recipe.dataset or recipe.train_file:
        same = own and (own.get("dataset"), own.get("train_file")) == (recipe.dataset, recipe.train_file)
        seed = int(own_seed) if same and own_seed is not None else recipe.seed
        return data, seed, f"{recipe.dataset or recipe.train_file} (the recipe's data)"
    if not (own.get("dataset") or own.get("train_file")):
        raise ConfigError(f"no data: the recipe names no dataset or train_file, and {model_dir} has no "
                          f"{' or '.join(TRAINING_CONFIGS)} naming the data it was trained on")
    data = {k: own.get(k, getattr(recipe, k)) for k in DATA_FIELDS}
    return data, int(own_seed if own_seed is not None else recipe.seed), f"{model_dir} (its training data)"


def _check_against_model(steps: list[Step], tm: TaskModel, start_state: str | None, model: Path) -> None:
    """What needs the model: its state (an already quantized input), layer ids (while the depth is known)."""
    if start_state is not None:
        raise ConfigError(f"{steps[0].where}: the input model {model} is already {start_state}; compress a float "
                          "task model")
    n: int | None = len(tm.head.encoder.layers)
    for step in steps:
        c = step.config
        try:
            if step.kind == "distill":
                if c.student_layers:
                    if n is not None:
                        distill_mod.check_student_layers(c.student_layers, n)
                    n = len(c.student_layers)
                elif c.student_config:
                    layers = c.student_config.get("num_hidden_layers", n)
                    if n is not None and isinstance(layers, int) and layers > n:
                        raise ConfigError(f"student_config num_hidden_layers={layers}: the model has only {n}")
                    n = layers if isinstance(layers, int) else None
                else:
                    n = None
            elif step.kind == "drop_layers":
                if n is not None and c.keep[-1] >= n:
                    raise ConfigError(f"keep={c.keep}: layer {c.keep[-1]} does not exist; the model has layers "
                                      f"0..{n - 1} here")
                try:  # a family whose layer 0 has no attention norm (ModernBERT) keeps its layer 0
                    structured.check_first_layer(tm.head.encoder.config, c.keep)
                except structured.PruningError as e:
                    raise ConfigError(str(e)) from None
                n = len(c.keep)
            elif step.kind == "lowrank" and n is not None:
                bad = [e for e in c.layers if e.count(".") == 2 and int(e.split(".")[1]) >= n]
                if bad:
                    raise ConfigError(f"layers: {bad[0]} does not exist; the model has layers 0..{n - 1} here")
        except ConfigError as e:
            raise ConfigError(f"{step.where}: {e}") from None


def _prepare_output(out: Path, model_dir: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BertkitError(f"--output {out} exists and is not a directory")
    if out.resolve() == model_dir.resolve() or out.resolve() in model_dir.resolve().parents:
        raise BertkitError(f"--output {out} holds the input model {model_dir}; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BertkitError(f"--output {out} exists and is not empty; pass --overwrite to start over in it")
    for p in out.iterdir() if out.is_dir() else []:  # only what a pipeline writes: never wipe what else is there
        if p.is_dir() and re.fullmatch(r"\.?step_\d+_[a-z_]+(\.tmp|\.work)?", p.name):
            shutil.rmtree(p)
        elif p.name in (REPORT_JSON, REPORT_MD, PARETO_PNG):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_pipeline(model: str | os.PathLike[str], recipe: CompressRecipe | dict[str, Any] | str | os.PathLike[str],
                 output: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Any]:
    """Run ``recipe`` on the task model in ``model``; write the step models and the report into ``output``.

    Returns the report (also ``output/report.json``). A failed step raises ``CompressionError`` (after the report
    with its error is written; earlier step directories stay). Settings, data and the output directory are
    checked before any work.
    """
    t_start = time.perf_counter()
    recipe = load_recipe(recipe)
    steps = parse_steps(recipe)
    model_dir, out = Path(model), Path(output)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory (give a fine-tuned task model directory)")
    device = pick_device(recipe.device)
    fmt, state = model_format(model_dir)
    original = load_model(model_dir, device=device, served=False)
    _check_against_model(steps, original, state, model_dir)
    if recipe.max_length is not None:
        original.max_length = min(recipe.max_length, original.head.encoder.config.max_tokens)
    data, split_seed, source = _resolve_data(recipe, model_dir)
    fcfg = FinetuneConfig(task=original.task, **data, max_length=original.max_length,
                          training=TrainConfig(seed=split_seed))
    splits = load_splits(fcfg)
    if recipe.eval_split not in splits or not len(splits[recipe.eval_split]):
        raise ConfigError(f"eval_split={recipe.eval_split!r}: the data has no such split (it has "
                          f"{', '.join(k for k, v in splits.items() if len(v))})")
    if original.task != "regression":
        for name, split in splits.items():
            unseen = sorted(set(split.label_names()) - set(original.labels))
            if unseen:
                raise ConfigError(f"{split.source} ({name}): label(s) {', '.join(map(repr, unseen[:5]))} are not among "
                                  f"the model's labels ({', '.join(original.labels)})")
    _prepare_output(out, model_dir, overwrite)

    run = _Run(recipe, out, splits, data, split_seed, original.max_length, device, MAIN_METRIC[original.task][0],
               model_dir)
    log.info("compressing %s: %d steps, data from %s (split seed %d), %s on %s", model_dir, len(steps), source,
             split_seed, run.metric, recipe.eval_split)
    report: dict[str, Any] = {
        "model": str(model_dir), "output": str(out), "status": "running", "task": original.task,
        "metric": run.metric, "eval_split": recipe.eval_split,
        "data": {"source": source, **{k: v for k, v in data.items() if v is not None}, "split_seed": split_seed,
                 "max_length": run.max_length, "examples": {k: len(v) for k, v in splits.items()}},
        "throughput": {"texts": min(recipe.throughput_texts, len(splits[recipe.eval_split])),
                       "split": recipe.eval_split, "timed_passes": TIMED_PASSES},
        "machine": machine_info(device), "recipe": asdict(recipe), "steps": []}
    rows: list[dict[str, Any]] = report["steps"]
    original_step = Step(0, "original", {}, None)
    tm = original
    for step in [original_step, *steps]:
        name = "step_0_original" if step.number == 0 else step.dirname
        label = "original" if step.number == 0 else step.label
        t0 = time.perf_counter()
        try:
            tm, row = _run_step(run, step, name, tm, fmt if step.number == 0 else None)
        except Exception as e:  # any failure of a step is recorded and stops the pipeline
            error = f"{type(e).__name__}: {e}" if not isinstance(e, BertkitError) else str(e)
            rows.append({"step": step.number, "kind": step.kind, "label": label, "dir": None, "status": "failed",
                         "error": error, "seconds": round(time.perf_counter() - t0, 2)})
            report.update(status="failed", seconds=round(time.perf_counter() - t_start, 1))
            write_report(out, report)
            log.debug("step %d failed", step.number, exc_info=True)
            done = f"steps 0-{step.number - 1} are in {out}" if step.number else "no step was saved"
            raise CompressionError(f"step {step.number} ({label}) failed: {error.rstrip('.')}; {done}, the report in "
                                   f"{out / REPORT_MD}", report) from e
        row = {"step": step.number, "kind": step.kind, "label": label, **row,
               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(_with_ratios(row, rows[0] if rows else row))
        run.current_dir = out / name
        write_report(out, report)
        log.info("step %d (%s): %s %s %.4f, %.2f MB, %.0f tokens/s", step.number, label, recipe.eval_split,
                 run.metric, row["eval"], row["size_mb"], row["tokens_per_s"])
    report.update(status="ok", seconds=round(time.perf_counter() - t_start, 1))
    write_report(out, report)
    return report


def _run_step(run: _Run, step: Step, name: str, tm: TaskModel, fmt: str | None) -> tuple[TaskModel, dict[str, Any]]:
    """Build the step's model in a temp directory, rename it into place, load it back as served and measure it."""
    final, build, work = run.out / name, run.out / f".{name}.tmp", run.out / f".{name}.work"
    for d in (build, work):
        shutil.rmtree(d, ignore_errors=True)  # left by a killed run
    build.mkdir()
    details: dict[str, Any] = {}
    try:
        if step.number == 0:
            _save_model(tm, build, fmt or "hf")
        else:
            work.mkdir()
            fmt, details = RUNNERS[step.kind](run, step, tm, build, work)
        os.replace(build, final)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    try:
        served = load_model(final, device=run.device)
        row = {"dir": name, "status": "ok", "format": fmt, **measure(run, served, final), "details": details}
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # a step directory exists only for a step that succeeded
        raise
    return served, row


# ---- the steps: each writes its model into `build` and returns (format, details) ---------------------------------
def _keep_logs(work: Path, build: Path, names: Sequence[str]) -> None:
    found = [work / n for n in names if (work / n).is_file()]
    if found:
        (build / TRAIN_LOGS).mkdir(exist_ok=True)
        for f in found:
            shutil.copyfile(f, build / TRAIN_LOGS / f.name)


def _distill(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    # The teacher is the model the previous step saved; distill loads it as a float task model in the HF layout.
    teacher = run.current_dir
    if model_format(teacher)[0] != "hf":  # e.g. an input stored compressed (sparse, not quantized)
        teacher = tm.save_pretrained(work / "teacher")
    settings = {**step.params, "teachers": [str(teacher)], **run.data, "max_length": run.max_length,
                "seed": run.split_seed, "device": run.recipe.device}
    if "progress" not in (step.params.get("training") or {}):
        settings.setdefault("progress", False)
    result = distill_mod.distill(work / "student", distill_mod.DistillConfig.from_dict(settings))
    result.model.save_pretrained(build)
    _keep_logs(work / "student", build, (METRICS_FILE, CURVE_FILE, distill_mod.CONFIG_FILE, distill_mod.RESULTS_FILE))
    return "hf", {"optimizer_steps": result.state.step, "best_step": result.state.best_step,
                  "stopped": result.state.stopped, "train_seconds": round(result.state.elapsed, 1),
                  "student_layers": len(result.model.head.encoder.layers)}


def _sparsity(tm: TaskModel) -> sparse.Masks | None:
    """Masks of the zeros a pruned float model already has (None when it has none)."""
    masks = sparse.Masks.from_weights(tm.head)
    return masks if masks.sparsity()["overall"] > 0 else None


def _prune(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    cfg = dataclasses.replace(step.config, device=run.recipe.device,
                              seed=step.config.seed if "seed" in step.params else run.recipe.seed)
    feats = run.features(tm, "train")
    if step.epochs is not None:
        cfg.steps = max(1, math.ceil(step.epochs * len(feats) / cfg.batch_size))
        cfg.validate()
    result = sparse.prune_gradually(tm, feats, config=cfg, output_dir=work)
    tm.save_pretrained(build)
    _keep_logs(work, build, (METRICS_FILE, CURVE_FILE))
    return "hf", {"sparsity": result.masks.sparsity()["overall"], "optimizer_steps": result.state.step,
                  "schedule": result.history}


def _finetune(run: _Run, tm: TaskModel, steps: int, lr: float, batch_size: int, work: Path,
              only_factors: bool = False, keep_zeros: bool = True) -> dict[str, Any]:
    """A short fine-tune on the training split; with ``keep_zeros`` a pruned model keeps its zeros."""
    if steps == 0:
        return {}
    masks = _sparsity(tm) if keep_zeros else None
    if masks is not None:
        masks.attach(tm.head)
    try:
        state = lowrank.finetune_lowrank(tm, run.features(tm, "train"), steps=steps, lr=lr, batch_size=batch_size,
                                         only_factors=only_factors, output_dir=work, seed=run.recipe.seed,
                                         device=run.recipe.device)
    finally:
        if masks is not None:
            masks.detach()
            masks.apply(tm.head)
    return {"finetune_steps": state.step}


def _structured(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    c: StructuredStep = step.config
    feats = run.features(tm, "train")
    order = np.random.default_rng(run.recipe.seed).permutation(len(feats))[:c.importance_batches * c.batch_size]
    batches = [make_batch(feats, order[i:i + c.batch_size]).to(tm.device) for i in range(0, len(order), c.batch_size)]
    importance = structured.taylor_importance(tm.head, batches, tm.loss)
    details: dict[str, Any] = {"before": structured.layer_sizes(tm.head)}
    if c.target_speedup is not None:
        timed = run.features(tm, run.recipe.eval_split, c.speedup_texts)
        _, history = structured.prune_to_speedup(tm.head, c.target_speedup, importance, step=c.speedup_step,
                                                 measure=lambda _m: seconds_per_pass(tm, timed))
        details["speedup"] = [{"heads": sum(s.sizes["heads"]), "intermediate": sum(s.sizes["intermediate"]),
                               "speedup": round(s.speedup, 3)} for s in history]
    else:
        structured.prune_by_importance(tm.head, c.head_fraction, c.neuron_fraction, importance)
    # Round each pruned FFN down to a multiple of `multiple_of`, dropping the least important neurons left:
    # int8 (static and dynamic) leaves layers of other sizes in float.
    widths = structured.layer_sizes(tm.head)["intermediate"]
    extra = {i: w % c.multiple_of for i, (w, w0) in enumerate(zip(widths, details["before"]["intermediate"],
                                                                   strict=True)) if w != w0 and w > c.multiple_of}
    if any(extra.values()):
        scores = structured.taylor_importance(tm.head, batches, tm.loss, heads=False).neurons
        structured.prune_neurons(tm.head, {i: torch.argsort(scores[i])[:n].tolist() for i, n in extra.items() if n})
    details["after"] = structured.layer_sizes(tm.head)
    details.update(_finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work))
    tm.save_pretrained(build)
    _keep_logs(work, build, (METRICS_FILE, CURVE_FILE))
    return "hf", details


def _drop_layers(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    c: DropLayersStep = step.config
    structured.drop_layers(tm.head, c.keep)
    details = _finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work)
    tm.save_pretrained(build)
    _keep_logs(work, build, (METRICS_FILE, CURVE_FILE))
    return "hf", details


def _lowrank(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    c: LowRankStep = step.config
    report = lowrank.factorize_model(tm, c.layers, c.energy, c.ranks)
    details: dict[str, Any] = {"params_before": report.params_before, "params_after": report.params_after,
                               "ranks": {r.name: r.rank for r in report.layers}}
    if c.finetune_steps and not any(r.rank for r in report.layers):
        log.warning("%s: no layer was factorised (each would not get smaller); fine-tuning the dense model",
                    step.where)
    details.update(_finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work, keep_zeros=False,
                             only_factors=c.only_factors and any(r.rank for r in report.layers)))
    lowrank.save_lowrank(tm, build)
    _keep_logs(work, build, (METRICS_FILE, CURVE_FILE))
    return "lowrank", details


def _quantize(run: _Run, step: Step, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
    c: QuantizeStep = step.config
    if c.mode == "dynamic":
        names = quantize.quantize_dynamic(tm)
    elif c.mode == "static":
        names = quantize.quantize_static(tm)
    else:
        skip = ("classifier",) if c.pooler else quantize.DEFAULT_SKIP
        names = quantize.quantize_weights(tm, c.bits, c.group_size, skip=skip, scale_dtype=c.scale_dtype)
    if not names:
        raise quantize.QuantizationError("no Linear layer could be quantized (int8 needs sizes that are multiples "
                                         "of 8)")
    if c.embeddings:  # after the Linears: the int8 paths refuse a model with quantized modules
        names += quantize.quantize_embeddings(tm, c.embeddings, c.group_size, scale_dtype=c.scale_dtype)
    quantize.save_compressed(tm, build)
    return "compressed", {"quantized_layers": len(names)}


RUNNERS: dict[str, Callable[[_Run, Step, TaskModel, Path, Path], tuple[str, dict[str, Any]]]] = {
    "distill": _distill, "prune": _prune, "structured": _structured, "drop_layers": _drop_layers,
    "lowrank": _lowrank, "quantize": _quantize}


# ---- measuring ------------------------------------------------------------------------------------------------------
def seconds_per_pass(tm: TaskModel, feats: Features, passes: int = TIMED_PASSES) -> float:
    """Median seconds of ``passes`` engine passes (task logits, as ``predict`` runs them) over ``feats``, after one
    warm-up pass."""
    times = []
    for i in range(passes + 1):
        start = time.perf_counter()
        tm._logits(feats, None)  # returns host arrays: the time includes the device's work
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_weights(module: torch.nn.Module) -> int:
    """Weights of the model as a float model would count them: a quantized layer counts in x out (+ bias), a
    low-rank layer its factors."""
    n = 0
    for m in module.modules():
        if isinstance(m, quantize._QUANTIZED):  # their weights are buffers
            n += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        else:
            n += sum(p.numel() for p in m.parameters(recurse=False))
    return n


def weight_sparsity(tm: TaskModel) -> float:
    """Share of exact zeros in the encoder layers' Linear weights (what ``prune`` prunes)."""
    zeros = total = 0
    for layer in tm.head.encoder.layers:
        for name in sparse.PRUNABLE:
            m = getattr(layer, name)
            w = (m.weight if isinstance(m, torch.nn.Linear) else m.weight_t if hasattr(m, "weight_t") else
                 m.int_weight() if isinstance(m, quantize.WeightOnlyLinear) else None)
            if w is not None:
                zeros += int((w == 0).sum())
                total += w.numel()
    return zeros / total if total else 0.0


def dir_bytes(directory: Path) -> int:
    """Bytes of the directory's own files (not of its sub-folders, e.g. train/)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def measure(run: _Run, tm: TaskModel, directory: Path) -> dict[str, Any]:
    """Metrics on the eval split and test, size on disk, parameters, engine throughput of a served model."""
    split = run.recipe.eval_split
    metrics = {"eval": tm.evaluate(run.splits[split])}
    if "test" in run.splits and len(run.splits["test"]):
        metrics["test"] = metrics["eval"] if split == "test" else tm.evaluate(run.splits["test"])
    timed = run.features(tm, split, run.recipe.throughput_texts)
    tokens = int(timed.lengths.sum())
    seconds = seconds_per_pass(tm, timed)
    sizes = quantize.size_report(directory)
    enc = tm.head.encoder
    return {"eval": metrics["eval"][run.metric], "test": metrics["test"][run.metric] if "test" in metrics else None,
            "size_mb": round(dir_bytes(directory) / 1e6, 4), "parameters": count_weights(tm.head),
            "sparsity": round(weight_sparsity(tm), 4), "layers": len(enc.layers),
            "heads": sum(layer.num_heads for layer in enc.layers),
            "intermediate": sum(enc.config.layer_intermediate_size(i) for i in range(len(enc.layers))),
            "tokens_per_s": round(tokens / seconds, 1), "throughput_tokens": tokens,
            "size_report": {"fp32_mb": sizes["fp32_mb"], "kinds_mb": sizes["kinds_mb"]}, "metrics": metrics}


def _with_ratios(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    row["size_x"] = round(base["size_mb"] / row["size_mb"], 3)
    row["speed_x"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    row["drop_points"] = round(100 * (base["eval"] - row["eval"]), 2)
    row["test_drop_points"] = (round(100 * (base["test"] - row["test"]), 2)
                               if row["test"] is not None and base["test"] is not None else None)
    return row


def machine_info(device: torch.device) -> dict[str, Any]:
    import bertkit

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "bertkit": bertkit.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---- the report ----------------------------------------------------------------------------------------------------
def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as a markdown table (what the CLI prints)."""
    split, metric = report["eval_split"], report["metric"]
    head = ["step", "model", f"{split} {metric}", f"test {metric}", "drop (pts)", "size MB", "size ×", "params",
            "sparsity", "tokens/s", "speed ×"]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for r in report["steps"]:
        if r["status"] != "ok":
            cells = [str(r["step"]), r["label"], f"**failed**: {r['error']}"] + [""] * (len(head) - 3)
        else:
            cells = [str(r["step"]), r["label"], f"{100 * r['eval']:.2f}",
                     "" if r["test"] is None else f"{100 * r['test']:.2f}", f"{r['drop_points']:.2f}",
                     f"{r['size_mb']:.2f}", f"{r['size_x']:.2f}", _params(r["parameters"]),
                     f"{100 * r['sparsity']:.0f}%", f"{r['tokens_per_s']:,.0f}", f"{r['speed_x']:.2f}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    m, t = report["machine"], report["throughput"]
    failed = [r for r in report["steps"] if r["status"] != "ok"]
    return "\n".join([
        f"# Compression of {report['model']}", "",
        f"Status: **{report['status']}**" + (f" (step {failed[0]['step']}: {failed[0]['error']})" if failed else ""),
        "",
        f"{report['metric']} on {report['eval_split']} (and test) of {report['data']['source']}, split seed "
        f"{report['data']['split_seed']}; drop = points lost on {report['eval_split']} vs step 0. Size: the files of "
        f"each step directory. Throughput: engine tokens/s over {t['texts']} {t['split']} texts, median of "
        f"{t['timed_passes']} passes after a warm-up, on {m['cpu']} ({m['torch_threads']} threads, {m['device']}).",
        "", format_table(report), "", "## Recipe", "", "```yaml",
        yaml.safe_dump(report["recipe"], sort_keys=False).rstrip(), "```", ""])


def plot_pareto(report: dict[str, Any], png: Path) -> Path | None:
    """Two panels, metric vs size MB and metric vs speedup; every step a labelled point, the original a star."""
    rows = [r for r in report["steps"] if r["status"] == "ok"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    y = [100 * r["eval"] for r in rows]
    for ax, key, xlabel in ((axes[0], "size_mb", "size on disk (MB)"), (axes[1], "speed_x", "speedup (×)")):
        x = [r[key] for r in rows]
        ax.plot(x, y, "-", color="0.75", zorder=1)
        ax.scatter(x[1:], y[1:], color="tab:blue", zorder=2)
        ax.scatter(x[:1], y[:1], marker="*", s=180, color="tab:red", zorder=3, label="original")
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(f"{r['step']} {r['label']}", (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{report['eval_split']} {report['metric']} (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].invert_xaxis()  # smaller is better: the frontier runs to the right in both panels
    fig.suptitle(f"compression of {Path(report['model']).name}")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and pareto.png, each written atomically."""
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / REPORT_MD, _markdown(report))
    plot_pareto(report, out / PARETO_PNG)


__all__ = ["STEP_KINDS", "CompressRecipe", "CompressionError", "Step", "format_table", "load_model", "load_recipe",
           "model_format", "parse_steps", "run_pipeline"]
