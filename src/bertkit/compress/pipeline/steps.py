"""The step kinds of a compression recipe: one class per kind, and ``STEP_KINDS``, the table of them.

A kind's class says everything the pipeline knows about it: its settings (``config_class``, the dataclass a
recipe's ``{kind: {params}}`` maps onto), how a recipe entry becomes them (``parse``), its label in the report,
what it checks against the model (``check_layers``: layer ids while the depth is known) and against the steps
after it (``why_last``: quantize and lowrank replace the float ``nn.Linear`` layers every other step works on, so
nothing may follow them), and its run (``run``: the step's model written into a build directory, in its format).
Nothing else in the pipeline looks at a step's kind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bertkit.compress import distill, lowrank, quantize, sparse, structured
from bertkit.compress.pipeline.configs import (
    DropLayersConfig,
    LowRankConfig,
    QuantizeConfig,
    StructuredConfig,
)
from bertkit.compress.pipeline.context import Run
from bertkit.compress.pipeline.formats import model_format, save_model
from bertkit.compress.pipeline.measure import seconds_per_pass
from bertkit.data.features import make_batch
from bertkit.errors import ConfigError
from bertkit.model.config import EncoderConfig
from bertkit.task_model import TaskModel
from bertkit.train.finetune import DATA_FIELDS
from bertkit.train.trainer import CURVE_FILE, METRICS_FILE
from bertkit.utils.recipes import config_from_dict

log = logging.getLogger("bertkit")

# Set once for the whole pipeline: the split must be the teacher's, and every step runs where it is measured.
RECIPE_ONLY = ("teachers", "teacher_weights", *DATA_FIELDS, "max_length", "device")
TRAIN_LOGS = "train"  # a step's training logs, inside its directory (not counted in its size)


# ---- the step kinds ------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One parsed recipe step. number: 1-based (0 is the original model); params: as the recipe gave them;
    config: the kind's settings (an instance of ``config_class``)."""

    number: int
    params: dict[str, Any]
    config: Any
    kind: ClassVar[str]
    config_class: ClassVar[type]
    # recipe settings this kind may not take either, beyond RECIPE_ONLY: key -> why
    recipe_keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def parse(cls, number: int, params: dict[str, Any]) -> Step:
        """The step from its recipe parameters, every setting checked."""
        cfg = config_from_dict(cls.config_class, params)
        cfg.validate()
        return cls(number, params, cfg)

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def where(self) -> str:
        return f"step {self.number} ({self.label})"

    @property
    def dirname(self) -> str:
        return f"step_{self.number}_{self.kind}"

    def why_last(self) -> str | None:
        """Why no step may follow this one; None when any may."""
        return None

    def check_layers(self, encoder: EncoderConfig, layers: int | None) -> int | None:
        """Fail on layer ids a model of ``layers`` layers (None: unknown) does not have; returns the layers the
        model has after this step. ``encoder``: the input model's config."""
        return layers

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        """Write this step's model, made from ``tm`` (changed in place), into ``build``; ``work`` holds what
        training writes. Returns (its format, details for the report)."""
        raise NotImplementedError


@dataclass
class OriginalStep(Step):
    """Step 0: the input model, saved as it came (``fmt``: its format)."""

    fmt: str = "hf"
    kind: ClassVar[str] = "original"

    @property
    def label(self) -> str:
        return "original"

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        save_model(tm, build, self.fmt)
        return self.fmt, {}


class DistillStep(Step):
    """A smaller student, the current model as teacher; settings: ``DistillConfig`` fields."""

    kind = "distill"
    config_class = distill.DistillConfig
    recipe_keys: ClassVar[dict[str, str]] = {
        "seed": "distill's seed also splits the data, so it is the model's own (the recipe's seed drives the other "
                "steps)"}

    @classmethod
    def parse(cls, number: int, params: dict[str, Any]) -> Step:
        # teachers: a stand-in until run time (the model the previous step saved)
        return cls(number, params, distill.DistillConfig.from_dict({**params,
                                                                    "teachers": ["<the model before this step>"]}))

    @property
    def label(self) -> str:
        c = self.config
        what = (f"layers {','.join(map(str, c.student_layers))}" if c.student_layers else
                "config" if c.student_config else Path(c.student_model).name)
        return f"distill {what}"

    def check_layers(self, encoder: EncoderConfig, layers: int | None) -> int | None:
        c = self.config
        if c.student_layers:
            if layers is not None:
                distill.check_student_layers(c.student_layers, layers)
            return len(c.student_layers)
        if c.student_config:
            n = c.student_config.get("num_hidden_layers", layers)
            if layers is not None and isinstance(n, int) and n > layers:
                raise ConfigError(f"student_config num_hidden_layers={n}: the model has only {layers}")
            return n if isinstance(n, int) else None
        return None

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        # The teacher is the model the previous step saved; distill loads it as a float task model in the HF layout.
        teacher = run.current_dir
        if model_format(teacher)[0] != "hf":  # e.g. an input stored compressed (sparse, not quantized)
            teacher = tm.save_pretrained(work / "teacher")
        settings = {**self.params, "teachers": [str(teacher)], **run.data, "max_length": run.max_length,
                    "seed": run.split_seed, "device": run.device_setting}
        if "progress" not in (self.params.get("training") or {}):
            settings.setdefault("progress", False)
        result = distill.distill(work / "student", distill.DistillConfig.from_dict(settings))
        result.model.save_pretrained(build)
        keep_logs(work / "student", build, (METRICS_FILE, CURVE_FILE, distill.CONFIG_FILE, distill.RESULTS_FILE))
        return "hf", {"optimizer_steps": result.state.step, "best_step": result.state.best_step,
                      "stopped": result.state.stopped, "train_seconds": round(result.state.elapsed, 1),
                      "student_layers": len(result.model.head.encoder.layers)}


@dataclass
class PruneStep(Step):
    """Gradual magnitude / oBERT pruning while fine-tuning; settings: ``SparsityConfig`` fields + ``epochs``."""

    epochs: float | None = None  # instead of steps
    kind: ClassVar[str] = "prune"
    config_class: ClassVar[type] = sparse.SparsityConfig

    @classmethod
    def parse(cls, number: int, params: dict[str, Any]) -> Step:
        rest = {k: v for k, v in params.items() if k != "epochs"}
        epochs = params.get("epochs")
        cfg = config_from_dict(sparse.SparsityConfig, rest)
        if epochs is not None:
            if "steps" in params:
                raise ConfigError("give steps or epochs, not both")
            if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
                raise ConfigError(f"epochs={epochs!r}: must be > 0")
            # the step count is known once the training set is: check the rest against a long run for now
            dataclasses.replace(cfg, steps=10**9).validate()
        else:
            cfg.validate()
        return cls(number, params, cfg, float(epochs) if epochs is not None else None)

    @property
    def label(self) -> str:
        c = self.config
        return f"prune {c.method} {c.sparsity * 100:g}%" + (f" B{c.block_size}" if c.block_size > 1 else "")

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        cfg = dataclasses.replace(self.config, device=run.device_setting,
                                  seed=self.config.seed if "seed" in self.params else run.seed)
        feats = run.features(tm, "train")
        if self.epochs is not None:
            cfg.steps = max(1, math.ceil(self.epochs * len(feats) / cfg.batch_size))
            cfg.validate()
        result = sparse.prune_gradually(tm, feats, config=cfg, output_dir=work)
        save_float(tm, build, work)
        return "hf", {"sparsity": result.masks.sparsity()["overall"], "optimizer_steps": result.state.step,
                      "schedule": result.history}


class StructuredStep(Step):
    """Heads and FFN neurons by Taylor importance, as fractions or down to a measured speedup."""

    kind = "structured"
    config_class = StructuredConfig

    @property
    def label(self) -> str:
        c = self.config
        if c.target_speedup is not None:
            return f"structured {c.target_speedup:g}x"
        return f"structured heads {c.head_fraction * 100:g}% neurons {c.neuron_fraction * 100:g}%"

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        c: StructuredConfig = self.config
        feats = run.features(tm, "train")
        order = np.random.default_rng(run.seed).permutation(len(feats))[:c.importance_batches * c.batch_size]
        batches = [make_batch(feats, order[i:i + c.batch_size]).to(tm.device)
                   for i in range(0, len(order), c.batch_size)]
        importance = structured.taylor_importance(tm.head, batches, tm.loss)
        details: dict[str, Any] = {"before": structured.layer_sizes(tm.head)}
        if c.target_speedup is not None:
            timed = run.features(tm, run.eval_split, c.speedup_texts)
            _, history = structured.prune_to_speedup(tm.head, c.target_speedup, importance, step=c.speedup_step,
                                                     measure=lambda _m: (run.clock or seconds_per_pass)(tm, timed))
            details["speedup"] = [{"heads": sum(s.sizes["heads"]), "intermediate": sum(s.sizes["intermediate"]),
                                   "speedup": round(s.speedup, 3)} for s in history]
        else:
            structured.prune_by_importance(tm.head, c.head_fraction, c.neuron_fraction, importance)
        # Round each pruned FFN down to a multiple of `multiple_of`, dropping the least important neurons left:
        # int8 (static and dynamic) leaves layers of other sizes in float.
        widths = structured.layer_sizes(tm.head)["intermediate"]
        extra = {i: w % c.multiple_of for i, (w, w0) in enumerate(zip(widths, details["before"]["intermediate"],
                                                                       strict=True))
                 if w != w0 and w > c.multiple_of}
        if any(extra.values()):
            scores = structured.taylor_importance(tm.head, batches, tm.loss, heads=False).neurons
            structured.prune_neurons(tm.head, {i: torch.argsort(scores[i])[:n].tolist()
                                               for i, n in extra.items() if n})
        details["after"] = structured.layer_sizes(tm.head)
        details.update(finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work))
        save_float(tm, build, work)
        return "hf", details


class DropLayersStep(Step):
    """Whole layers removed (``keep`` the rest), then an optional short fine-tune."""

    kind = "drop_layers"
    config_class = DropLayersConfig

    @property
    def label(self) -> str:
        return f"drop_layers keep {','.join(map(str, self.config.keep))}"

    def check_layers(self, encoder: EncoderConfig, layers: int | None) -> int | None:
        keep = self.config.keep
        if layers is not None and keep[-1] >= layers:
            raise ConfigError(f"keep={keep}: layer {keep[-1]} does not exist; the model has layers "
                              f"0..{layers - 1} here")
        try:  # a family whose layer 0 has no attention norm (ModernBERT) keeps its layer 0
            structured.check_first_layer(encoder, keep)
        except structured.PruningError as e:
            raise ConfigError(str(e)) from None
        return len(keep)

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        c: DropLayersConfig = self.config
        structured.drop_layers(tm.head, c.keep)
        details = finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work)
        save_float(tm, build, work)
        return "hf", details


class LowRankStep(Step):
    """Truncated-SVD factors of chosen Linears, then an optional short fine-tune."""

    kind = "lowrank"
    config_class = LowRankConfig

    @property
    def label(self) -> str:
        c = self.config
        return "lowrank " + (f"ranks {c.ranks}" if c.ranks is not None else f"energy {c.energy:g}")

    def why_last(self) -> str | None:
        return (f"the model is already low-rank factorised ({self.where}); its factored layers are not the float "
                "Linears other steps work on, so lowrank comes last")

    def check_layers(self, encoder: EncoderConfig, layers: int | None) -> int | None:
        if layers is not None:
            bad = [e for e in self.config.layers if e.count(".") == 2 and int(e.split(".")[1]) >= layers]
            if bad:
                raise ConfigError(f"layers: {bad[0]} does not exist; the model has layers 0..{layers - 1} here")
        return layers

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        c: LowRankConfig = self.config
        report = lowrank.factorize_model(tm, c.layers, c.energy, c.ranks)
        details: dict[str, Any] = {"params_before": report.params_before, "params_after": report.params_after,
                                   "ranks": {r.name: r.rank for r in report.layers}}
        if c.finetune_steps and not any(r.rank for r in report.layers):
            log.warning("%s: no layer was factorised (each would not get smaller); fine-tuning the dense model",
                        self.where)
        details.update(finetune(run, tm, c.finetune_steps, c.lr, c.batch_size, work, keep_zeros=False,
                                only_factors=c.only_factors and any(r.rank for r in report.layers)))
        lowrank.save_lowrank(tm, build)
        keep_logs(work, build, (METRICS_FILE, CURVE_FILE))
        return "lowrank", details


class QuantizeStep(Step):
    """int8 dynamic / static, or weight-only int8 / int4 (``compress/quantize/``)."""

    kind = "quantize"
    config_class = QuantizeConfig

    @property
    def label(self) -> str:
        c = self.config
        return f"quantize {c.what}" if c.mode == "weight_only" else f"quantize int8 {c.mode}"

    def why_last(self) -> str | None:
        return (f"the model is already {self.config.what} ({self.where}); quantize changes the float Linear layers "
                "every step works on, so it comes last")

    def run(self, run: Run, tm: TaskModel, build: Path, work: Path) -> tuple[str, dict[str, Any]]:
        c: QuantizeConfig = self.config
        # through the package's names, so that a replaced quantize.quantize_dynamic (a test's) is what runs
        if c.mode == "dynamic":
            names = quantize.quantize_dynamic(tm)
        elif c.mode == "static":
            names = quantize.quantize_static(tm)
        else:
            skip = ("classifier",) if c.pooler else quantize.DEFAULT_SKIP
            names = quantize.quantize_weights(tm, c.bits, c.group_size, skip=skip, scale_dtype=c.scale_dtype)
        if not names:
            raise quantize.QuantizationError("no Linear layer could be quantized (int8 needs sizes that are "
                                             "multiples of 8)")
        if c.embeddings:  # after the Linears: the int8 paths refuse a model with quantized modules
            names += quantize.quantize_embeddings(tm, c.embeddings, c.group_size, scale_dtype=c.scale_dtype)
        quantize.save_compressed(tm, build)
        return "compressed", {"quantized_layers": len(names)}


STEP_KINDS: dict[str, type[Step]] = {cls.kind: cls for cls in (DistillStep, PruneStep, StructuredStep,
                                                                 DropLayersStep, LowRankStep, QuantizeStep)}


def parse_step(number: int, entry: Any) -> Step:
    """Recipe entry ``{kind: {params}}`` number ``number`` -> its step, every setting checked (errors name it)."""
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise ConfigError(f"step {number}: each step is one mapping {{kind: {{params}}}}, e.g. "
                          f"{{quantize: {{mode: dynamic}}}}; got {entry!r:.100}")
    kind, params = next(iter(entry.items()))
    if kind not in STEP_KINDS:
        raise ConfigError(f"step {number}: unknown step kind {kind!r}; known: {', '.join(STEP_KINDS)}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ConfigError(f"step {number} ({kind}): its parameters must be a mapping, got {params!r:.100}")
    cls = STEP_KINDS[kind]
    try:
        _refuse_recipe_settings(cls, params)
        return cls.parse(number, dict(params))
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(f"step {number} ({kind}): {e}") from None


def _refuse_recipe_settings(cls: type[Step], params: dict[str, Any]) -> None:
    """A step may not set what the recipe sets once for every step (``RECIPE_ONLY``, ``cls.recipe_keys``)."""
    why = {k: "the teacher is the model before this step" if k.startswith("teacher") else
           "set once in the recipe, for every step" for k in RECIPE_ONLY} | cls.recipe_keys
    nested = params.get("training") if isinstance(params.get("training"), dict) else {}
    fixed = sorted((set(params) | set(nested)) & set(why))
    if fixed:
        raise ConfigError(f"{fixed[0]}: {why[fixed[0]]}")


# ---- what the steps share --------------------------------------------------------------------------------------
def save_float(tm: TaskModel, build: Path, work: Path) -> None:
    """A float step's model in the HF task layout, with the training logs of its fine-tune."""
    tm.save_pretrained(build)
    keep_logs(work, build, (METRICS_FILE, CURVE_FILE))


def keep_logs(work: Path, build: Path, names: Sequence[str]) -> None:
    """Copy the training logs ``names`` found in ``work`` into the step's ``train/`` folder."""
    found = [work / n for n in names if (work / n).is_file()]
    if found:
        (build / TRAIN_LOGS).mkdir(exist_ok=True)
        for f in found:
            shutil.copyfile(f, build / TRAIN_LOGS / f.name)


def sparsity_masks(tm: TaskModel) -> sparse.Masks | None:
    """Masks of the zeros a pruned float model already has (None when it has none)."""
    masks = sparse.Masks.from_weights(tm.head)
    return masks if masks.sparsity()["overall"] > 0 else None


def finetune(run: Run, tm: TaskModel, steps: int, lr: float, batch_size: int, work: Path,
             only_factors: bool = False, keep_zeros: bool = True) -> dict[str, Any]:
    """A short fine-tune on the training split; with ``keep_zeros`` a pruned model keeps its zeros."""
    if steps == 0:
        return {}
    masks = sparsity_masks(tm) if keep_zeros else None
    if masks is not None:
        masks.attach(tm.head)
    try:
        state = lowrank.finetune_lowrank(tm, run.features(tm, "train"), steps=steps, lr=lr, batch_size=batch_size,
                                         only_factors=only_factors, output_dir=work, seed=run.seed,
                                         device=run.device_setting)
    finally:
        if masks is not None:
            masks.detach()
            masks.apply(tm.head)
    return {"finetune_steps": state.step}
