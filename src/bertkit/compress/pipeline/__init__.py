"""The compression pipeline: a recipe of steps run in order on a task model, every step saved, measured, reported.

    bertkit compress runs/bbc --recipe recipes/compress/distill-int8.yaml --output runs/bbc-distill-int8

A recipe is plain YAML, 1:1 with ``CompressRecipe``: the data (default: the data the model was trained on, from
its ``finetune_config.json``) and ``steps``, a list of ``{kind: {params}}`` run in order, each on the model the
step before it left:

  distill      a smaller student, the current model as teacher       DistillConfig fields (``compress/distill/``)
  prune        gradual magnitude / oBERT pruning while fine-tuning    SparsityConfig fields + ``epochs``
  structured   heads and FFN neurons by Taylor importance, as fractions or down to a measured speedup
  drop_layers  whole layers removed
  lowrank      truncated-SVD factors of chosen Linears, then an optional short fine-tune
  quantize     int8 dynamic / static, or weight-only int8 / int4 (``compress/quantize/``)

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

The package, one module per concern:

  recipe.py    ``CompressRecipe`` (the schema), ``load_recipe`` with ``key=value`` / ``steps.K.param=value``
  steps.py     one class per step kind (its settings, label, checks and run) and ``STEP_KINDS``, the table of them
  configs.py   the settings of the kinds without a config class elsewhere (structured, drop_layers, lowrank, quantize)
  formats.py   a step directory's format, ``load_model`` (as served), saving
  context.py   ``Run``: what one run's steps and measurements share
  measure.py   metric, size, parameters, sparsity, throughput of a step's model
  report.py    the table, report.json / report.md, pareto.png
  run.py       ``run_pipeline``
"""

import os
from typing import Any

from bertkit.compress.pipeline import run as runner
from bertkit.compress.pipeline.configs import (
    QUANTIZE_MODES,
    DropLayersConfig,
    LowRankConfig,
    QuantizeConfig,
    StructuredConfig,
)
from bertkit.compress.pipeline.context import Run
from bertkit.compress.pipeline.formats import load_model, model_format, save_model
from bertkit.compress.pipeline.measure import (
    TIMED_PASSES,
    count_weights,
    dir_bytes,
    machine_info,
    measure,
    seconds_per_pass,
    weight_sparsity,
    with_ratios,
)
from bertkit.compress.pipeline.recipe import SPLITS, CompressRecipe, load_recipe, override_steps, parse_steps
from bertkit.compress.pipeline.report import PARETO_PNG, REPORT_JSON, REPORT_MD, format_table, plot_pareto, write_report
from bertkit.compress.pipeline.run import TRAINING_CONFIGS, CompressionError
from bertkit.compress.pipeline.steps import (
    RECIPE_ONLY,
    STEP_KINDS,
    TRAIN_LOGS,
    DistillStep,
    DropLayersStep,
    LowRankStep,
    OriginalStep,
    PruneStep,
    QuantizeStep,
    Step,
    StructuredStep,
    parse_step,
)

__all__ = ["PARETO_PNG", "QUANTIZE_MODES", "RECIPE_ONLY", "REPORT_JSON", "REPORT_MD", "SPLITS", "STEP_KINDS",
           "TIMED_PASSES", "TRAINING_CONFIGS", "TRAIN_LOGS", "CompressRecipe", "CompressionError", "DistillStep",
           "DropLayersConfig", "DropLayersStep", "LowRankConfig", "LowRankStep", "OriginalStep", "PruneStep",
           "QuantizeConfig", "QuantizeStep", "Run", "Step", "StructuredConfig", "StructuredStep", "count_weights",
           "dir_bytes", "format_table", "load_model", "load_recipe", "machine_info", "measure", "model_format",
           "override_steps", "parse_step", "parse_steps", "plot_pareto", "run_pipeline", "save_model",
           "seconds_per_pass", "weight_sparsity", "with_ratios", "write_report"]


def run_pipeline(model: str | os.PathLike[str], recipe: CompressRecipe | dict[str, Any] | str | os.PathLike[str],
                 output: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Any]:
    """``run.run_pipeline`` timed with this package's ``seconds_per_pass``, looked up here at call time: a clock put
    in its place (``monkeypatch.setattr(pipeline, "seconds_per_pass", clock)``, as the tests' deterministic one)
    times every step and measurement alike."""
    return runner.run_pipeline(model, recipe, output, overwrite, clock=seconds_per_pass)
