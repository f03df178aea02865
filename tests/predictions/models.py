"""Tiny task models for the ensemble and threshold tests: bertkit task models of two families (tests/compress/
family_dirs.py ``task_model``), saved and loaded back as users get them."""

from __future__ import annotations

from pathlib import Path

import torch

from bertkit.task_model import TaskModel
from tests.compress.family_dirs import task_model

TEXTS = ["A man is playing a guitar.", "hi", "Stocks fell sharply after the bank raised rates again.",
         "Café naïve façade", "The parser returns a value when the function raises an error.", "good music film"]


def saved(directory: Path, task: str, labels: tuple[str, ...], seed: int, variant: str = "bert") -> TaskModel:
    """A task model with random head weights (``seed``) saved in ``directory``, loaded back from it."""
    tm = task_model(variant, directory, task, labels, seed=seed)
    if task == "regression":  # one output column, no label names
        tm.labels, tm.label2id = [], {}
        tm.save_pretrained(directory)
    return TaskModel.from_pretrained(directory)


def permuted(model: TaskModel, order: list[str], directory: Path) -> TaskModel:
    """The same model with its labels listed in ``order`` (classifier rows moved along), saved and loaded."""
    rows = [model.label2id[n] for n in order]
    with torch.no_grad():
        model.model.classifier.weight.copy_(model.model.classifier.weight[rows].clone())
        model.model.classifier.bias.copy_(model.model.classifier.bias[rows].clone())
    model.labels, model.label2id = list(order), {n: i for i, n in enumerate(order)}
    model.save_pretrained(directory)
    return TaskModel.from_pretrained(directory)
