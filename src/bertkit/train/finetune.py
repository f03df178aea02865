"""Fine-tuning: data -> task model -> training engine -> best model on disk -> test metrics.

The output directory holds everything a run produces:
  config.json, model.safetensors, tokenizer files, bertkit_task.json   the best model (HF layout)
  checkpoints/step-*.pt                                                 the last K training checkpoints
  metrics.jsonl, training_curve.png                                     the curve, appended as it runs
  finetune_config.json, results.json                                    what was asked, what came out

Stability options (Mosbach et al. 2021; Zhang et al. 2021 "Revisiting few-sample BERT fine-tuning"),
all off by default: layer-wise LR decay, re-initialising the top k layers, freezing the embeddings
and the bottom k layers.

Multi-label models get one decision threshold per label, tuned on dev after training (``thresholds="tuned"``, the
default; ``bertkit.thresholds``) and saved in ``bertkit_task.json``; ``results.json`` compares dev/test micro and
macro F1 with the fixed 0.5 and with the tuned thresholds.

Under ``torchrun`` (DDP) ``batch_size`` stays the global batch, what one process would take: each rank trains on
its slice of every batch, so N ranks give the model one process gives; rank 0 writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.data.chunking import check_long_inputs, check_window_pooling
from bertkit.data.features import Features, first_per_owner, shuffled_batches
from bertkit.data.tag_schemes import AUTO, check_scheme, resolve_scheme
from bertkit.data.tasks import TaskData, check_known_labels, check_task, load_builtin, read_task_file, split_dataset
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import BertkitError, ConfigError
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.directory import load_encoder
from bertkit.model.heads import strip_task_keys
from bertkit.task_model import MAIN_METRIC, TASK_FILE, TaskModel, build_head
from bertkit.train.distributed import DistInfo, init_distributed, rank_share
from bertkit.train.finetune_setup import (  # importable from here too, as before
    CONFIG_FILE,
    RESULTS_FILE,
    FinetuneResult,
    apply_stability_options,
    pooler_unused,
    prepare_output_dir,
)
from bertkit.train.trainer import TrainConfig, Trainer, TrainState
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.recipes import config_from_dict
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")


@dataclass
class DataConfig:
    """Where a trainer's task data comes from (fine-tuning, distillation, compression recipes): a built-in
    dataset, or files and their columns; ``load_splits`` reads them."""

    dataset: str | None = None  # built-in dataset name, or:
    train_file: str | None = None
    eval_file: str | None = None
    test_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_separator: str = "|"
    max_length: int = 128


DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "max_length")


def data_fields(cfg: DataConfig) -> dict[str, Any]:
    """The data source of ``cfg`` (every DataConfig field but max_length), to hand to another config."""
    return {k: getattr(cfg, k) for k in DATA_FIELDS}


@dataclass
class FinetuneConfig(DataConfig):
    task: str = "classification"
    model: str = DEFAULT_MODEL  # built-in name or local HF directory
    reinit_layers: int = 0  # re-initialise the top k encoder layers (and the pooler)
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the bottom k encoder layers
    doc_stride: int = 128  # qa: tokens consecutive context windows share
    max_answer_length: int = 15  # qa: longest answer, in tokens
    null_threshold: float | None = None  # qa: answer "" when no-answer beats the best span by this (v2-style data)
    scheme: str = AUTO  # ner tag scheme: auto (detected, logged), bio, iob1, bioes, bilou or plain
    thresholds: str = "tuned"  # multilabel: "tuned" (per label, on dev, saved with the model) or "fixed" (0.5)
    long_inputs: str = "truncate"  # truncate, or chunk: a text past max_length is cut into overlapping windows
    stride: int | None = None  # chunk: tokens shared by consecutive windows (default: a quarter of the window)
    window_pooling: str = "mean"  # chunk: pool the windows' logits of an example by mean or max
    # chunk: train on at most this many windows of each example per epoch, drawn afresh each epoch (None: all) -
    # a long document then costs an epoch what a short one does, so a time budget still covers every example
    train_windows: int | None = None
    training: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """From a plain mapping (a YAML recipe or kwargs); unknown keys and wrong types are errors naming them.
        Training keys may sit flat (``lr: 1e-4``) or in a ``training:`` block (``utils/recipes.config_from_dict``)."""
        return config_from_dict(cls, d)


def load_splits(cfg: FinetuneConfig) -> dict[str, TaskData]:
    """train/dev(/test) for a built-in dataset, or from files; a seeded stratified split where none is given."""
    if cfg.dataset:
        if cfg.train_file:
            raise ValueError("give either a built-in dataset or --train FILE, not both")
        splits = load_builtin(cfg.dataset, seed=cfg.training.seed)
        task = next(iter(splits.values())).task
        if task != cfg.task and {task, cfg.task} != {"classification", "pair-classification"}:
            raise ValueError(f"dataset {cfg.dataset!r} is a {task} dataset, not {cfg.task}; use --task {task}")
        return splits
    if not cfg.train_file:
        raise ValueError("no training data: give --dataset NAME or --train FILE")
    kw = dict(task=cfg.task, text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
              label_column=cfg.label_column, label_separator=cfg.label_separator)
    train = read_task_file(cfg.train_file, **kw)
    if cfg.eval_file:
        splits = {"train": train, "dev": read_task_file(cfg.eval_file, **kw)}
        if cfg.test_file:
            splits["test"] = read_task_file(cfg.test_file, **kw)
        return splits
    splits = split_dataset(train, seed=cfg.training.seed)
    log.info("no --eval file: split %s into train/dev/test %d/%d/%d (stratified, seed %d)", cfg.train_file,
             len(splits["train"]), len(splits["dev"]), len(splits["test"]), cfg.training.seed)
    return splits


def train_and_score(tm: TaskModel, model: nn.Module, tcfg: TrainConfig, train_feats: Features,
                    loss_fn: Callable[[nn.Module, Any], Tensor], out: Path, *, fingerprint: dict[str, Any],
                    callbacks: Sequence[Callable[[Trainer], None]] = (), resume: bool = False,
                    dist: DistInfo | None = None, dev: TaskData | None = None,
                    dev_feats: Features | None = None, test: TaskData | None = None,
                    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                    find_unused_parameters: bool = False, windows_per_example: int | None = None
                    ) -> tuple[TrainState, TaskModel, dict[str, float] | None, dict[str, float] | None, dict[str, Any]]:
    """Train ``model`` (``tm``'s head, or a module that trains it) on the engine, keep the best dev checkpoint as a
    task model in ``out`` (the last one without a dev set), load it back and score dev and test.

    Returns (state, best model, dev metrics, test metrics, the run summary ``results.json`` starts with).
    ``evaluate`` defaults to ``tm``'s metrics on ``dev_feats``. Fine-tuning and distillation both end here.
    ``dist`` (from ``init_distributed``): under torchrun ``tcfg.batch_size`` is the global batch, each rank trains
    on its slice of it; rank 0 saves the model, every rank loads it back and scores it alike.
    ``windows_per_example``: windowed training features keep that many windows of each example per epoch.
    """
    dist = dist or init_distributed(tcfg.device)
    if evaluate is None:
        def evaluate(_m: nn.Module) -> dict[str, float]:
            return tm.evaluate(dev_feats, gold=dev)

    rank_tcfg = dataclasses.replace(tcfg, batch_size=rank_share(tcfg.batch_size, dist.world_size),
                                    device=str(dist.device))
    trainer = Trainer(
        model, rank_tcfg,
        batches=lambda epoch: shuffled_batches(train_feats, tcfg.batch_size, tcfg.seed, epoch, dist.rank,
                                               dist.world_size, windows_per_example),
        loss_fn=loss_fn, output_dir=out,
        evaluate=evaluate if dev_feats is not None else None,
        on_best=lambda _m, _metrics: tm.save_pretrained(out, tokenizer=False),
        fingerprint={**fingerprint, "world_size": dist.world_size}, callbacks=callbacks,
        find_unused_parameters=find_unused_parameters)
    t0 = time.perf_counter()
    state = trainer.fit(resume=resume)
    if dev_feats is None and dist.is_main:
        tm.save_pretrained(out, tokenizer=False)  # no dev set to pick a best model: keep the last one
    dist.barrier()  # the saved model is there for every rank to load
    best = TaskModel.from_pretrained(out, device=dist.device)
    dev_metrics = best.evaluate(dev) if dev is not None and len(dev) else None
    test_metrics = best.evaluate(test) if test is not None and len(test) else None
    summary = {"stopped": state.stopped, "steps": state.step, "best_step": state.best_step,
               "train_seconds": round(state.elapsed, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
               "train_tokens": state.tokens}
    return state, best, dev_metrics, test_metrics, summary


def finetune(output_dir: str | os.PathLike[str], config: FinetuneConfig | None = None, *, resume: bool = False,
             overwrite: bool = False, callbacks: tuple = (), **settings: Any) -> FinetuneResult:
    """Fine-tune an encoder on a task; see ``FinetuneConfig`` and ``TrainConfig`` for ``settings``.

    >>> finetune("runs/bbc", task="classification", dataset="bbc-news", epochs=2, time_budget="10m")
    """
    cfg = config or FinetuneConfig.from_dict(settings)
    if config is not None and settings:
        raise ValueError("pass either config= or keyword settings, not both")
    cfg.training.validate()
    if cfg.train_windows is not None and (cfg.long_inputs != "chunk" or cfg.task == "qa" or cfg.train_windows < 1):
        raise ConfigError(f"train_windows={cfg.train_windows}: a number >= 1 of windows per training example, for "
                          f"long_inputs='chunk' (got long_inputs={cfg.long_inputs!r}, task {cfg.task!r}; qa trains "
                          "on every window, each with its own answer span)")
    if cfg.task == "qa":
        from bertkit.train.finetune_qa import finetune_qa  # question answering has its own data and model

        return finetune_qa(output_dir, cfg, resume=resume, overwrite=overwrite, callbacks=callbacks)
    check_task(cfg.task)
    if cfg.thresholds not in THRESHOLD_MODES:
        raise ValueError(f"thresholds={cfg.thresholds!r}: must be one of {', '.join(THRESHOLD_MODES)}")
    check_long_inputs(cfg.long_inputs)
    check_window_pooling(cfg.window_pooling)
    # The task's own metric picks the best checkpoint unless one is named (a copy: the caller's config stays).
    tcfg = dataclasses.replace(cfg.training, metric=cfg.training.metric or MAIN_METRIC[cfg.task][0])
    out = Path(output_dir)
    dist = init_distributed(tcfg.device)
    rank_share(tcfg.batch_size, dist.world_size)  # an uneven global batch fails before any work
    splits = load_splits(cfg)  # data errors come before any model is built or file is touched
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    if len(train) == 0:
        raise BertkitError(f"{train.source}: the training set is empty")
    for other in (dev, test):
        if other is not None and len(other):
            check_known_labels(train, other)
    check_scheme(cfg.scheme, allow_auto=True)
    if cfg.task != "ner" and cfg.scheme != AUTO:
        raise BertkitError(f"scheme={cfg.scheme!r} applies to ner (tagging), not {cfg.task}")
    scheme = resolve_scheme(cfg.scheme, train, dev, test) if cfg.task == "ner" else None
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite)
    dist.barrier()

    device = dist.device
    if device.type == "cpu":
        tune_allocator()
    torch.manual_seed(tcfg.seed)  # the head's initial weights
    encoder, _, info = load_encoder(cfg.model, who="fine-tuning")
    model_dir = info.path
    strip_task_keys(encoder.config)  # a task checkpoint as the starting model: its old labels do not apply
    labels = train.label_names() if cfg.task != "regression" else []
    head = build_head(encoder, cfg.task, max(len(labels), 1))
    apply_stability_options(encoder, cfg)
    # chunk: the training examples are the windows (each with its example's label), dev/test are scored per example
    tm = TaskModel(head, Tokenizer.from_dir(info.weights_dir), cfg.task, labels,
                   min(cfg.max_length, encoder.config.max_tokens), out, scheme=scheme, long_inputs=cfg.long_inputs,
                   stride=cfg.stride, window_pooling=cfg.window_pooling)
    train_feats = tm.featurize(train)
    if cfg.train_windows is not None and train_feats.windows is not None:
        kept = first_per_owner(np.arange(len(train_feats)), train_feats.windows.owner, cfg.train_windows)
        log.info("training on at most %d window(s) of each text per epoch: %d of the %d windows of %d texts",
                 cfg.train_windows, len(kept), len(train_feats), len(train))
    dev_feats = tm.featurize(dev) if dev is not None and len(dev) else None
    if dist.is_main:
        atomic_write_text(out / CONFIG_FILE, json.dumps({**asdict(cfg), "model_dir": str(model_dir)}, indent=2)
                          + "\n")
        tm.tokenizer.save(out)

    fingerprint = {"task": cfg.task, "model": str(model_dir), "labels": labels, "train_examples": len(train),
                   "max_length": tm.max_length, "reinit_layers": cfg.reinit_layers,
                   "freeze_embeddings": cfg.freeze_embeddings, "freeze_layers": cfg.freeze_layers,
                   "encoder": encoder.config.to_dict()}
    if cfg.long_inputs != "truncate":  # (only then: runs started before the option resume as they were)
        fingerprint.update(long_inputs=cfg.long_inputs, stride=cfg.stride)
    if cfg.train_windows is not None:
        fingerprint.update(train_windows=cfg.train_windows)
    log.info("fine-tuning %s on %s: %d train / %d dev examples, %d labels, max_length %d", model_dir.name,
             cfg.dataset or cfg.train_file, len(train), len(dev) if dev is not None else 0, len(labels),
             tm.max_length)
    state, best, dev_metrics, test_metrics, summary = train_and_score(
        tm, head, tcfg, train_feats, tm.loss, out, fingerprint=fingerprint, callbacks=callbacks, resume=resume,
        dist=dist, dev=dev, dev_feats=dev_feats, test=test,
        find_unused_parameters=pooler_unused(head), windows_per_example=cfg.train_windows)
    report = None
    if cfg.task == "multilabel":
        dev_metrics, test_metrics, report = settle_thresholds(best, cfg.thresholds, dev, test, dev_metrics,
                                                              test_metrics, out if dist.is_main else None)
    results = {"task": cfg.task, "dataset": cfg.dataset or cfg.train_file, **summary,
               "train_tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
               "world_size": dist.world_size, "dev": dev_metrics, "test": test_metrics,
               **({"thresholds": report} if report else {})}
    if dist.is_main:
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return FinetuneResult(out, state, dev_metrics, test_metrics, best, thresholds=report)


THRESHOLD_MODES = ("tuned", "fixed")


def settle_thresholds(best: TaskModel, mode: str, dev: TaskData | None, test: TaskData | None,
                      dev_fixed: dict[str, Any] | None, test_fixed: dict[str, Any] | None, out: Path | None
                      ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
    """A trained multi-label model's thresholds: tuned on dev and saved in ``out``'s task file (None: another rank
    writes it), or the fixed 0.5. Returns the dev and test metrics with the thresholds the model now uses, and a
    report: which ones, their values, and dev/test micro/macro F1 with the fixed and the tuned ones."""
    if mode == "fixed" or dev is None or not len(dev):
        if mode == "tuned":
            log.warning("no dev set to tune the multilabel thresholds on: the model predicts with the fixed 0.5")
        return dev_fixed, test_fixed, {"used": "fixed", "values": None}
    best.tune_thresholds(dev)
    if out is not None:
        atomic_write_text(out / TASK_FILE, json.dumps(best.task_meta(), indent=2) + "\n")
    dev_tuned = best.evaluate(dev)
    test_tuned = best.evaluate(test) if test is not None and len(test) else None
    report: dict[str, Any] = {"used": "tuned", "values": best.thresholds}
    for split, fixed, tuned in (("dev", dev_fixed, dev_tuned), ("test", test_fixed, test_tuned)):
        if fixed is not None and tuned is not None:
            report[split] = {kind: {k: m[k] for k in ("micro_f1", "macro_f1")}
                             for kind, m in (("fixed", fixed), ("tuned", tuned))}
            log.info("%s micro/macro F1: fixed 0.5 %.4f/%.4f, tuned %.4f/%.4f", split, fixed["micro_f1"],
                     fixed["macro_f1"], tuned["micro_f1"], tuned["macro_f1"])
    return dev_tuned, test_tuned, report
