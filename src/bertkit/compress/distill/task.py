"""Task-specific distillation: a smaller student learns a fine-tuned task from one or more teachers.

Teachers must do one task with one label set and one vocabulary (``check_teachers``); the data's labels must be
theirs. A task run writes a normal task model directory (``TaskModel.from_pretrained``, ``bertkit evaluate``,
``bertkit predict``) plus checkpoints, ``metrics.jsonl`` (eval records also carry ``train_<loss>``, the mean
of each loss since the last eval), ``distill_config.json`` and ``results.json`` (student and teachers on test).
Under ``torchrun`` it runs as fine-tuning does (``train_and_score``): ``batch_size`` is the global batch, each rank
trains on its slice, rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertkit.compress.distill.config import CONFIG_FILE, OUTPUT_FILES, RESULTS_FILE, DistillConfig
from bertkit.compress.distill.distiller import Distiller
from bertkit.compress.distill.students import build_task_student, count_parameters, encoder_of, same_vocabulary
from bertkit.data.tasks import TaskData, check_known_labels
from bertkit.errors import BertkitError, ConfigError
from bertkit.task_model import MAIN_METRIC, TaskModel
from bertkit.train.distributed import init_distributed, rank_share
from bertkit.train.finetune import (
    FinetuneConfig,
    FinetuneResult,
    data_fields,
    load_splits,
    prepare_output_dir,
    train_and_score,
)
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")


@dataclass
class DistillResult(FinetuneResult):
    teachers_test: list[dict[str, float] | None]


def check_teachers(teachers: Sequence[TaskModel], names: Sequence[str]) -> list[list[int] | None]:
    """Teachers must do one task with one label set and one vocabulary. Returns, per teacher, the order that
    puts its logits in the first teacher's label order (None where it already is)."""
    first = teachers[0]
    orders: list[list[int] | None] = [None]
    for t, name in zip(teachers[1:], names[1:], strict=True):
        if t.task != first.task:
            raise ConfigError(f"teacher {name} does {t.task}, teacher {names[0]} does {first.task}")
        if set(t.labels) != set(first.labels):
            raise ConfigError(f"teacher {name} has labels {t.labels}, teacher {names[0]} has {first.labels}: "
                              "soft labels of several teachers must cover the same labels")
        if not same_vocabulary(t.tokenizer, first.tokenizer):
            raise ConfigError(f"teacher {name} and teacher {names[0]} use different vocabularies; a student reads "
                              "one tokenization")
        orders.append(None if t.labels == first.labels else [t.label2id[x] for x in first.labels])
    return orders


def check_data_labels(data: TaskData, labels: Sequence[str], teacher: str) -> None:
    """The data's label set must be the teacher's (naming both lists)."""
    if data.task == "regression":
        return
    names = data.label_names()
    if set(names) != set(labels):
        raise ConfigError(f"{data.source}: the data's labels {names} differ from those of teacher {teacher} "
                          f"{list(labels)}")


def distill(output_dir: str | os.PathLike[str], config: DistillConfig | None = None, *, resume: bool = False,
            overwrite: bool = False, callbacks: tuple = (), **settings: Any) -> DistillResult:
    """Task-specific distillation; see ``DistillConfig`` and ``TrainConfig`` for ``settings``.

    >>> distill("runs/bbc-small", teachers=["runs/bbc"], dataset="bbc-news", student_layers=[0, 2, 4], epochs=3)
    """
    if config is not None and settings:
        raise ValueError("pass either config= or keyword settings, not both")
    cfg = config or DistillConfig.from_dict(settings)
    cfg.validate()
    out = Path(output_dir)
    dist = init_distributed(cfg.training.device)
    rank_share(cfg.training.batch_size, dist.world_size)  # an uneven global batch fails before any work
    device = dist.device
    if device.type == "cpu":
        tune_allocator()
    # Everything that can be wrong is checked before the output directory is touched or a step is taken.
    teachers = [TaskModel.from_pretrained(d, device=device) for d in cfg.teachers]
    orders = check_teachers(teachers, cfg.teachers)
    primary = teachers[0]
    tcfg = dataclasses.replace(cfg.training, metric=cfg.training.metric or MAIN_METRIC[primary.task][0])
    fcfg = FinetuneConfig(task=primary.task, **data_fields(cfg), max_length=cfg.max_length, training=tcfg)
    splits = load_splits(fcfg)
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    if len(train) == 0:
        raise BertkitError(f"{train.source}: the training set is empty")
    check_data_labels(train, primary.labels, cfg.teachers[0])
    for other in (dev, test):
        if other is not None and len(other):
            check_known_labels(train, other)
    torch.manual_seed(tcfg.seed)  # fresh student weights, classifier and projections
    student, copied = build_task_student(cfg, primary, cfg.teachers[0])
    distiller = Distiller(student, [t.head for t in teachers], teacher_weights=cfg.teacher_weights,
                          temperature=cfg.temperature, alpha_kl=cfg.alpha_kl, alpha_ce=cfg.alpha_ce,
                          alpha_hidden=cfg.alpha_hidden, alpha_attn=cfg.alpha_attn, alpha_value=cfg.alpha_value,
                          layer_map=cfg.layer_map if cfg.layer_map is not None else copied,
                          attn_layers=cfg.attn_layers, relation_heads=cfg.relation_heads, label_orders=orders)
    limit = min(encoder_of(m).config.max_tokens for m in (student, *[t.head for t in teachers]))
    tm = TaskModel(student, primary.tokenizer, primary.task, primary.labels, min(cfg.max_length, limit), out,
                   scheme=primary.scheme)
    train_feats = tm.featurize(train)
    dev_feats = tm.featurize(dev) if dev is not None and len(dev) else None
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite, OUTPUT_FILES)
        atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
        tm.tokenizer.save(out)
    dist.barrier()

    fingerprint = {"teachers": [str(Path(d).resolve()) for d in cfg.teachers], "weights": distiller.weights,
                   "labels": primary.labels, "train_examples": len(train), "max_length": tm.max_length,
                   "student": student.encoder.config.to_dict(), "layer_map": distiller.layer_map,
                   "losses": {k: v for k, v in asdict(cfg).items() if k.startswith("alpha_") or k in
                              ("temperature", "attn_layers", "relation_heads")}}
    log.info("distilling %s into a %d-layer student (%.1fM vs %.1fM parameters) on %s: %d train / %d dev examples",
             ", ".join(cfg.teachers), len(student.encoder.layers), count_parameters(student) / 1e6,
             count_parameters(primary.head) / 1e6, cfg.dataset or cfg.train_file, len(train),
             len(dev) if dev is not None else 0)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        return {**tm.evaluate(dev_feats, gold=dev), **distiller.pop_train_losses()}

    state, best, dev_metrics, test_metrics, summary = train_and_score(
        tm, distiller, tcfg, train_feats, lambda m, b: m(b), out, fingerprint=fingerprint, callbacks=callbacks,
        resume=resume, dist=dist, dev=dev, dev_feats=dev_feats, test=test, evaluate=evaluate,
        find_unused_parameters=True)  # which student parts the losses reach depends on their weights
    teachers_test = [t.evaluate(test) if test is not None and len(test) else None for t in teachers]
    results = {"task": primary.task, "dataset": cfg.dataset or cfg.train_file, **summary,
               "student_parameters": count_parameters(best.head), "student_layers": len(best.head.encoder.layers),
               "dev": dev_metrics, "test": test_metrics,
               "teachers": [{"model": d, "parameters": count_parameters(t.head), "test": m}
                            for d, t, m in zip(cfg.teachers, teachers, teachers_test, strict=True)],
               "world_size": dist.world_size}
    if dist.is_main:
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return DistillResult(out, state, dev_metrics, test_metrics, best, teachers_test)
