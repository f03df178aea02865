"""What one pipeline run knows while its steps run and are measured: settings, data, and features tokenized once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bertkit.data.features import Features
from bertkit.data.tasks import TaskData
from bertkit.task_model import TaskModel


@dataclass
class Run:
    out: Path  # the output directory
    splits: dict[str, TaskData]
    data: dict[str, Any]  # the data fields, as distill takes them
    split_seed: int  # the model's own (see the package docstring): distill splits the data with it
    seed: int  # the recipe's: every other training step
    device_setting: str | None  # the recipe's device, as training takes it (None: CUDA when present)
    device: torch.device  # where every step runs and is measured
    max_length: int
    eval_split: str
    throughput_texts: int
    metric: str
    current_dir: Path  # the last saved model: the teacher of a distill step
    cache: dict[tuple[str, int, int], Features] = field(default_factory=dict)
    # seconds per engine pass of a model over features: what every step and measurement is timed with
    clock: Callable[[TaskModel, Features], float] | None = None

    def features(self, tm: TaskModel, split: str, n: int | None = None) -> Features:
        """Features of ``split`` (its first n examples) at the model's max_length, tokenized once per run."""
        data = self.splits[split]
        n = len(data) if n is None else min(n, len(data))
        key = (split, n, tm.max_length)
        if key not in self.cache:
            self.cache[key] = tm.featurize(data if n == len(data) else data.subset(range(n)))
        return self.cache[key]
