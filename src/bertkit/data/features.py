"""Task examples -> token ids and label tensors, and packed (padding-free) batches of them.

Labels per task (what the head's loss expects):
  classification, pair-classification  class id                       ()            int64
  multilabel                           multi-hot vector               (num_labels,) float32
  regression                           target                         ()            float32
  ner                                  tag id of each word's first    (n_tokens,)   int64, -100 elsewhere
                                       sub-word, -100 on [CLS]/[SEP] and continuation pieces
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bertkit.data.batch import DeviceBatch, pack
from bertkit.data.chunking import Windows, chunk_texts, chunk_words, window_token_labels
from bertkit.data.corpus import shard_batches
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import Tokenizer
from bertkit.model.attention import Packing

IGNORE = -100


@dataclass
class Features:
    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: list | None  # per example, see the module docstring; None when unlabelled (prediction)
    word_ids: list[list[int | None]] | None  # ner: word index of each token
    n_truncated: int
    # long_inputs="chunk": rows are windows, ``windows.owner`` maps each to its example (None: a row per example)
    windows: Windows | None = None
    example_labels: list | None = None  # chunk: the labels per example (``labels`` are per window)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass
class PackedBatch(DeviceBatch):
    """Sequences back to back with no padding: ids (total_tokens,), labels per example or per token."""

    input_ids: Tensor  # (total_tokens,)
    token_type_ids: Tensor  # (total_tokens,)
    packing: Packing
    labels: Tensor | None  # (batch,), (batch, num_labels) or (total_tokens,)
    indices: np.ndarray  # row of each sequence in the Features it came from
    num_tokens: int  # tokens the encoder runs on
    num_units: int  # what the loss averages over: examples, or labelled tokens for ner


def featurize(data: TaskData, tokenizer: Tokenizer, max_length: int,
              label2id: dict[str, int] | None, long_inputs: str = "truncate", stride: int | None = None) -> Features:
    """Tokenize a dataset and turn its labels into ids; ``label2id`` None skips the labels.

    long_inputs "chunk": an example longer than ``max_length`` becomes several rows, one per window
    (``bertkit.data.chunking``), each with its example's label (ner: its own tokens' labels); ``stride`` is the
    windows' overlap in tokens (None: a quarter of the window).
    """
    if long_inputs == "chunk":
        return _featurize_windows(data, tokenizer, max_length, label2id, stride)
    if data.task == "ner":
        batch, word_ids = tokenizer.encode_words(data.words or [], max_length)
        labels = None
        if label2id is not None:
            labels = [_align_tags(tags, wids, label2id) for tags, wids in zip(data.labels, word_ids, strict=True)]
        return Features(batch.ids, batch.type_ids, labels, word_ids, batch.n_truncated)
    batch = tokenizer.encode(data.texts, data.pairs, max_length)
    return Features(batch.ids, batch.type_ids, _sequence_labels(data, label2id), None, batch.n_truncated)


def _sequence_labels(data: TaskData, label2id: dict[str, int] | None) -> list | None:
    if label2id is None or not data.labels:
        return None
    if data.task == "regression":
        return [float(y) for y in data.labels]
    if data.task == "multilabel":
        return [_multi_hot(y, label2id) for y in data.labels]
    return [label2id[str(y)] for y in data.labels]


def _featurize_windows(data: TaskData, tokenizer: Tokenizer, max_length: int, label2id: dict[str, int] | None,
                       stride: int | None) -> Features:
    if data.task == "ner":
        win = chunk_words(tokenizer, data.words or [], max_length, stride)
        assert win.example_word_ids is not None and win.word_ids is not None
        per_example = None
        if label2id is not None:
            per_example = [_align_tags(tags, wids, label2id)
                           for tags, wids in zip(data.labels, win.example_word_ids, strict=True)]
        labels = None if per_example is None else window_token_labels(per_example, win, IGNORE)
        return Features(win.ids, win.type_ids, labels, win.word_ids, 0, win, per_example)
    win = chunk_texts(tokenizer, data.texts, data.pairs, max_length, stride)
    per_example = _sequence_labels(data, label2id)
    labels = None if per_example is None else [per_example[i] for i in win.owner]
    return Features(win.ids, win.type_ids, labels, None, 0, win, per_example)


def _align_tags(tags: Sequence[str], word_ids: Sequence[int | None], label2id: dict[str, int]) -> list[int]:
    """First sub-word of each word carries the word's tag; every other token is ignored by the loss."""
    out, prev = [], None
    for w in word_ids:
        out.append(label2id[tags[w]] if w is not None and w != prev else IGNORE)
        prev = w
    return out


def _multi_hot(names: Sequence[str], label2id: dict[str, int]) -> list[float]:
    v = [0.0] * len(label2id)
    for name in names:
        v[label2id[name]] = 1.0
    return v


def make_batch(features: Features, indices: Sequence[int] | np.ndarray) -> PackedBatch:
    idx = np.asarray(indices, dtype=np.int64)
    ids, types, packing = pack([features.ids[i] for i in idx], [features.type_ids[i] for i in idx])
    labels, units = None, len(idx)
    if features.labels is not None:
        if features.word_ids is not None:  # ner: one label per token
            labels = torch.tensor([t for i in idx for t in features.labels[i]], dtype=torch.long)
            units = int((labels != IGNORE).sum())
        else:
            rows = [features.labels[i] for i in idx]
            labels = torch.tensor(rows, dtype=torch.float32 if isinstance(rows[0], float | list) else torch.long)
    return PackedBatch(ids, types, packing, labels, idx, packing.total_tokens, units)


def shuffled_batches(features: Features, batch_size: int, seed: int, epoch: int, rank: int = 0,
                     world: int = 1, windows_per_example: int | None = None) -> list[PackedBatch]:
    """One epoch of training batches in a random order fixed by (seed, epoch), so a resumed run sees
    exactly the batches an uninterrupted one would. Under torchrun ``batch_size`` is the global batch and
    each rank gets its slice of every one (``shard_batches``; the last, smaller batch too).

    windows_per_example: windowed features (long_inputs="chunk") keep at most this many windows of each example
    in the epoch, drawn afresh each epoch (still fixed by (seed, epoch)); None keeps every window."""
    order = np.random.default_rng([seed, epoch]).permutation(len(features))
    if windows_per_example is not None and features.windows is not None:
        order = first_per_owner(order, features.windows.owner, windows_per_example)
    return [make_batch(features, idx) for idx in shard_batches(order, batch_size, rank, world, drop_last=False)]


def first_per_owner(order: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """The rows of ``order`` (a permutation of windows) whose window is among the first ``k`` of its owner in that
    order - in a random order, k windows of each example drawn without replacement. Order is kept.

    order (n,), owner (n_windows,) -> (m,), m = sum over examples of min(k, its windows)."""
    if k < 1:
        raise ValueError(f"windows per example must be >= 1, got {k}")
    own = owner[order]
    grouped = np.argsort(own, kind="stable")  # positions grouped by owner, each group in order of appearance
    first = np.searchsorted(own[grouped], own[grouped], side="left")  # where each position's group starts
    rank = np.empty(len(order), dtype=np.int64)
    rank[grouped] = np.arange(len(order)) - first
    return order[rank < k]

