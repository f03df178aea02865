"""One pipeline run: every setting checked first, then each step built, saved, loaded back as served, measured.

Each step's model is built in ``DIR/.step_<k>_<kind>.tmp`` (its training in ``.work``) and renamed to
``DIR/step_<k>_<kind>`` when complete, so a step directory is always a whole model; the report is rewritten after
every step. A step that fails is recorded with its error, its directory is not left behind, and the pipeline stops
(``CompressionError``, which carries the report).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bertkit.compress import distill
from bertkit.compress.pipeline.context import Run
from bertkit.compress.pipeline.formats import load_model, model_format
from bertkit.compress.pipeline.measure import TIMED_PASSES, machine_info, measure, seconds_per_pass, with_ratios
from bertkit.compress.pipeline.recipe import CompressRecipe, load_recipe, parse_steps
from bertkit.compress.pipeline.report import PARETO_PNG, REPORT_JSON, REPORT_MD, write_report
from bertkit.compress.pipeline.steps import OriginalStep, Step
from bertkit.data.features import Features
from bertkit.errors import BertkitError, CheckpointError, ConfigError
from bertkit.task_model import MAIN_METRIC, TaskModel
from bertkit.train.finetune import DATA_FIELDS, FinetuneConfig, load_splits
from bertkit.train.trainer import TrainConfig
from bertkit.utils.runtime import pick_device

log = logging.getLogger("bertkit")

TRAINING_CONFIGS = (distill.CONFIG_FILE, "finetune_config.json")  # where a model's split seed is recorded


class CompressionError(BertkitError):
    """A pipeline step failed. ``report``: the report as written, the failed step's row last."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _own_training_config(model_dir: Path) -> dict[str, Any]:
    for name in TRAINING_CONFIGS:
        if (model_dir / name).is_file():
            return json.loads((model_dir / name).read_text(encoding="utf-8"))
    return {}


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
    layers: int | None = len(tm.head.encoder.layers)
    for step in steps:
        try:
            layers = step.check_layers(tm.head.encoder.config, layers)
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
                 output: str | os.PathLike[str], overwrite: bool = False,
                 clock: Callable[[TaskModel, Features], float] | None = None) -> dict[str, Any]:
    """Run ``recipe`` on the task model in ``model``; write the step models and the report into ``output``.

    Returns the report (also ``output/report.json``). A failed step raises ``CompressionError`` (after the report
    with its error is written; earlier step directories stay). Settings, data and the output directory are
    checked before any work. ``clock``: seconds per engine pass (default ``measure.seconds_per_pass``), what every
    step and measurement is timed with.
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

    run = Run(out, splits, data, split_seed, recipe.seed, recipe.device, device, original.max_length,
              recipe.eval_split, recipe.throughput_texts, MAIN_METRIC[original.task][0], model_dir,
              clock=clock or seconds_per_pass)
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
    tm = original
    for step in [OriginalStep(0, {}, None, fmt), *steps]:
        t0 = time.perf_counter()
        try:
            tm, row = _run_step(run, step, tm)
        except Exception as e:  # any failure of a step is recorded and stops the pipeline
            error = f"{type(e).__name__}: {e}" if not isinstance(e, BertkitError) else str(e)
            rows.append({"step": step.number, "kind": step.kind, "label": step.label, "dir": None,
                         "status": "failed", "error": error, "seconds": round(time.perf_counter() - t0, 2)})
            report.update(status="failed", seconds=round(time.perf_counter() - t_start, 1))
            write_report(out, report)
            log.debug("step %d failed", step.number, exc_info=True)
            done = f"steps 0-{step.number - 1} are in {out}" if step.number else "no step was saved"
            raise CompressionError(f"step {step.number} ({step.label}) failed: {error.rstrip('.')}; {done}, the "
                                   f"report in {out / REPORT_MD}", report) from e
        row = {"step": step.number, "kind": step.kind, "label": step.label, **row,
               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(with_ratios(row, rows[0] if rows else row))
        run.current_dir = out / step.dirname
        write_report(out, report)
        log.info("step %d (%s): %s %s %.4f, %.2f MB, %.0f tokens/s", step.number, step.label, recipe.eval_split,
                 run.metric, row["eval"], row["size_mb"], row["tokens_per_s"])
    report.update(status="ok", seconds=round(time.perf_counter() - t_start, 1))
    write_report(out, report)
    return report


def _run_step(run: Run, step: Step, tm: TaskModel) -> tuple[TaskModel, dict[str, Any]]:
    """Build the step's model in a temp directory, rename it into place, load it back as served and measure it."""
    name = step.dirname
    final, build, work = run.out / name, run.out / f".{name}.tmp", run.out / f".{name}.work"
    for d in (build, work):
        shutil.rmtree(d, ignore_errors=True)  # left by a killed run
    build.mkdir()
    work.mkdir()
    try:
        fmt, details = step.run(run, tm, build, work)
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
