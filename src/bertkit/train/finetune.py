"""Fine-tuning: data -> task model -> training engine -> best model on disk -> test metrics.

The output directory holds everything a run produces:
  config.json, model.safetensors, tokenizer files, bertkit_task.json   the best model (HF layout)
  checkpoints/step-*.pt                                                 the last K training checkpoints
  metrics.jsonl, training_curve.png                                     the curve, appended as it runs
  finetune_config.json, results.json                                    what was asked, what came out

Stability options (Mosbach et al. 2021; Zhang et al. 2021 "Revisiting few-sample BERT fine-tuning"),
all off by default: layer-wise LR decay, re-initialising the top k layers, freezing the embeddings
and the bottom k layers.

Under ``torchrun`` (DDP) ``batch_size`` stays the global batch, what one process would take: each rank trains on
its slice of every batch, so N ranks give the model one process gives; rank 0 writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.data.chunking import check_long_inputs, check_window_pooling
from bertkit.data.features import Features, shuffled_batches
from bertkit.data.tasks import TaskData, check_known_labels, check_task, load_builtin, read_task_file, split_dataset
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import BertkitError
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.bert import BertModel
from bertkit.model.directory import load_encoder
from bertkit.model.heads import strip_task_keys
from bertkit.task_model import MAIN_METRIC, TaskModel, build_head
from bertkit.train.checkpoint import checkpoint_dir
from bertkit.train.distributed import DistInfo, init_distributed, rank_share
from bertkit.train.trainer import CURVE_FILE, METRICS_FILE, TrainConfig, Trainer, TrainState
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.recipes import config_from_dict
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

CONFIG_FILE = "finetune_config.json"
RESULTS_FILE = "results.json"
_OUR_FILES = ("config.json", "model.safetensors", "bertkit_task.json", METRICS_FILE, CURVE_FILE, CONFIG_FILE,
              RESULTS_FILE)


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
    long_inputs: str = "truncate"  # truncate, or chunk: a text past max_length is cut into overlapping windows
    stride: int | None = None  # chunk: tokens shared by consecutive windows (default: a quarter of the window)
    window_pooling: str = "mean"  # chunk: pool the windows' logits of an example by mean or max
    training: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """From a plain mapping (a YAML recipe or kwargs); unknown keys and wrong types are errors naming them.
        Training keys may sit flat (``lr: 1e-4``) or in a ``training:`` block (``utils/recipes.config_from_dict``)."""
        return config_from_dict(cls, d)


@dataclass
class FinetuneResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None
    test: dict[str, float] | None
    model: TaskModel


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


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool, ours: tuple[str, ...] = _OUR_FILES) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise BertkitError(f"--output {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (resume or overwrite):
        raise BertkitError(f"--output {output_dir} exists and is not empty; pass --resume to continue the run "
                           "in it or --overwrite to start over")
    if overwrite and not resume and output_dir.is_dir():
        # Only what a run writes: never wipe a directory the user pointed at by mistake.
        shutil.rmtree(checkpoint_dir(output_dir), ignore_errors=True)
        for name in ours:
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def apply_stability_options(encoder: BertModel, cfg: FinetuneConfig) -> None:
    n = len(encoder.layers)
    for name, k in (("reinit_layers", cfg.reinit_layers), ("freeze_layers", cfg.freeze_layers)):
        if not 0 <= k <= n:
            raise ValueError(f"{name}={k}: the model has {n} layers")
    if cfg.reinit_layers:
        for layer in encoder.layers[n - cfg.reinit_layers:]:
            layer.apply(encoder._init_weights)
        if encoder.pooler is not None:
            encoder.pooler.apply(encoder._init_weights)
        log.info("re-initialised the top %d layers and the pooler", cfg.reinit_layers)
    frozen = ([encoder.embeddings] if cfg.freeze_embeddings else []) + list(encoder.layers[:cfg.freeze_layers])
    for module in frozen:
        module.requires_grad_(False)
    if frozen:
        log.info("froze %s%d bottom layers", "the embeddings and " if cfg.freeze_embeddings else "",
                 cfg.freeze_layers)


def pooler_unused(head: nn.Module) -> bool:
    """Whether the head's encoder has a pooler the head never reads (token tasks; families whose sequence head has
    its own dense): it gets no gradient, so DDP must be told to look for unused parameters."""
    return head.encoder.pooler is not None and not head.spec.uses_pooler


def train_and_score(tm: TaskModel, model: nn.Module, tcfg: TrainConfig, train_feats: Features,
                    loss_fn: Callable[[nn.Module, Any], Tensor], out: Path, *, fingerprint: dict[str, Any],
                    callbacks: Sequence[Callable[[Trainer], None]] = (), resume: bool = False,
                    dist: DistInfo | None = None, dev: TaskData | None = None,
                    dev_feats: Features | None = None, test: TaskData | None = None,
                    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                    find_unused_parameters: bool = False
                    ) -> tuple[TrainState, TaskModel, dict[str, float] | None, dict[str, float] | None, dict[str, Any]]:
    """Train ``model`` (``tm``'s head, or a module that trains it) on the engine, keep the best dev checkpoint as a
    task model in ``out`` (the last one without a dev set), load it back and score dev and test.

    Returns (state, best model, dev metrics, test metrics, the run summary ``results.json`` starts with).
    ``evaluate`` defaults to ``tm``'s metrics on ``dev_feats``. Fine-tuning and distillation both end here.
    ``dist`` (from ``init_distributed``): under torchrun ``tcfg.batch_size`` is the global batch, each rank trains
    on its slice of it; rank 0 saves the model, every rank loads it back and scores it alike.
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
                                               dist.world_size),
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
    check_task(cfg.task)
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
                   min(cfg.max_length, encoder.config.max_tokens), out, long_inputs=cfg.long_inputs,
                   stride=cfg.stride, window_pooling=cfg.window_pooling)
    train_feats = tm.featurize(train)
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
    log.info("fine-tuning %s on %s: %d train / %d dev examples, %d labels, max_length %d", model_dir.name,
             cfg.dataset or cfg.train_file, len(train), len(dev) if dev is not None else 0, len(labels),
             tm.max_length)
    state, best, dev_metrics, test_metrics, summary = train_and_score(
        tm, head, tcfg, train_feats, tm.loss, out, fingerprint=fingerprint, callbacks=callbacks, resume=resume,
        dist=dist, dev=dev, dev_feats=dev_feats, test=test,
        find_unused_parameters=pooler_unused(head))
    results = {"task": cfg.task, "dataset": cfg.dataset or cfg.train_file, **summary,
               "train_tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
               "world_size": dist.world_size, "dev": dev_metrics, "test": test_metrics}
    if dist.is_main:
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return FinetuneResult(out, state, dev_metrics, test_metrics, best)
