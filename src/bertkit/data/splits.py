"""Splitting a task's examples reproducibly (stratified train/dev/test) and checking labels across splits."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection

import numpy as np

from bertkit.data.task_files import SPLITS, TaskData
from bertkit.errors import InputFileError


def _strata(data: TaskData) -> list[str]:
    """One stratum key per example: what split_dataset keeps in proportion across train/dev/test."""
    if data.task in ("classification", "pair-classification"):
        return list(data.labels)
    if data.task == "multilabel":
        keys = ["|".join(sorted(labels)) for labels in data.labels]
        counts = Counter(keys)
        # rare label combinations cannot be spread over three splits: group them by their first label instead
        return [k if counts[k] >= 3 else (sorted(labels)[0] if labels else "") for k, labels in zip(
            keys, data.labels, strict=True)]
    if data.task == "regression":
        values = np.asarray(data.labels, dtype=float)
        edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])
        return [str(b) for b in np.searchsorted(edges, values, side="right")]
    return ["entities" if any(t != "O" for t in tags) else "none" for tags in data.labels]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of a stratum of n go to train/dev/test; with n >= 3 each split with a share gets at least one."""
    held = [math.floor(n * f + 0.5) for f in fractions[1:]]
    if n >= 3:
        held = [max(h, 1) if f > 0 else 0 for h, f in zip(held, fractions[1:], strict=True)]
    min_train = 1 if n >= 3 and fractions[0] > 0 else 0
    while n - sum(held) < min_train:  # rounding up dev and test can leave train short: take back from the larger
        held[int(held[1] > held[0])] -= 1
    return [n - sum(held), *held]


def split_dataset(data: TaskData, seed: int = 42,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, TaskData]:
    """Stratified, seeded train/dev/test split; each split keeps the original order of its examples."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers that sum to 1, got {fractions}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(_strata(data)):
        groups[key].append(i)
    rng = np.random.default_rng(seed)  # one generator, strata in sorted order: the split depends on seed only
    parts: list[list[int]] = [[], [], []]
    for key in sorted(groups):
        members = rng.permutation(groups[key]).tolist()
        n_train, n_dev, _ = _split_sizes(len(members), fractions)
        parts[0] += members[:n_train]
        parts[1] += members[n_train:n_train + n_dev]
        parts[2] += members[n_train + n_dev:]
    return {name: data.subset(sorted(part), source=f"{data.source}:{name}")
            for name, part in zip(SPLITS, parts, strict=True)}


def check_known_labels(train: TaskData, other: TaskData) -> None:
    """Fail if `other` (a dev or test set) holds classes or tags that never occur in `train`."""
    if train.task != other.task:
        raise ValueError(f"{other.source} is {other.task} data, {train.source} is {train.task}")
    if train.task == "regression":
        return
    check_labels_among(other, train.label_names(), f"never seen in the training data ({train.source})",
                       "a model cannot learn them")


def check_labels_among(data: TaskData, known: Collection[str], what: str, consequence: str) -> None:
    """Fail if `data` holds classes or tags outside `known`, naming each with the line (or row) it first occurs
    at; `what` says where they are missing from ("not among the model's labels (a, b)")."""
    if data.task == "regression":
        return

    def names(label: object) -> list:
        return [label] if isinstance(label, str) else list(label)

    known = set(known)
    first: dict[str, int] = {}
    for i, label in enumerate(data.labels):
        for name in names(label):
            if name not in known:
                first.setdefault(name, i)
    if not first:
        return
    listed = ", ".join(
        f"{name!r} (first at {data.where[i] if data.where else f'example {i + 1}'})"
        for name, i in sorted(first.items(), key=lambda item: item[1])[:10])
    more = f" and {len(first) - 10} more" if len(first) > 10 else ""
    kind = "tags" if data.task == "ner" else "labels"
    raise InputFileError(data.source, f"{len(first)} {kind} {what}: {listed}{more}; {consequence}")
