"""``Ensemble``: several task models with the same labels whose probabilities are averaged (as DeepHateExplainer
ensembles BERT, XLM-R and ELECTRA), behind ``TaskModel``'s ``predict`` / ``evaluate``.

    ens = Ensemble.from_pretrained(["runs/bert", "runs/xlmr"], weights=[1, 2])
    ens.predict(["some text"])  # [{"label", "probabilities"}], the members' weighted mean

Members may be of different families: each one tokenizes the texts itself, so only their outputs meet. Labels are
matched by name (members listing them in another order are aligned to the first member's order); members with other
label sets or another task are refused, naming both. Classification and pairs average the softmax probabilities,
multi-label the sigmoid probabilities, regression the scores, NER each word's tag probabilities (read, as a single
model reads its tag, at the word's first sub-word: members' tokenizers split words differently, words are what they
share). A multi-label ensemble decides with the weighted mean of its members' thresholds (each member's tuned ones,
or 0.5), or with thresholds tuned on the averaged probabilities (``tune_thresholds``), or with ``threshold=`` as
``TaskModel``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertkit.data.tasks import TaskData, check_labels_among
from bertkit.loader import load_task_model
from bertkit.task_model import TaskModel
from bertkit.task_outputs import ner_metrics, ner_prediction, sequence_metrics, sequence_predictions
from bertkit.thresholds import Choice, decision_thresholds, tune_thresholds

log = logging.getLogger("bertkit")


class Ensemble:
    """Task models of one task and one label set; ``weights`` (default equal) are normalised to sum to 1."""

    def __init__(self, models: Sequence[TaskModel], weights: Sequence[float] | None = None) -> None:
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one task model")
        first = models[0]
        self.names = [str(m.directory) if m.directory is not None else f"model {i + 1}" for i, m in enumerate(models)]
        self.columns = []  # per member: its output column of each of the ensemble's labels
        for name, m in zip(self.names, models, strict=True):
            if m.task != first.task:
                raise ValueError(f"ensemble members do different tasks: {self.names[0]} does {first.task}, "
                                 f"{name} does {m.task}")
            if set(m.labels) != set(first.labels):
                raise ValueError(f"ensemble members have different label sets: {self.names[0]} has "
                                 f"{{{', '.join(sorted(first.labels))}}}, {name} has {{{', '.join(sorted(m.labels))}}}")
            self.columns.append(np.array([m.label2id[n] for n in first.labels], dtype=np.int64))
        self.models = models
        self.weights = _normalised(weights, len(models))
        self.task = first.task
        self.labels = list(first.labels)
        self.scheme = getattr(first, "scheme", None) or "bio"  # ner: the tag scheme the entities are read by
        self.label2id = {name: i for i, name in enumerate(self.labels)}
        self.thresholds: dict[str, float] | None = None  # multilabel: tuned on the ensemble's own probabilities

    @classmethod
    def from_pretrained(cls, directories: Sequence[str | os.PathLike[str]], weights: Sequence[float] | None = None,
                        **load_options: Any) -> Ensemble:
        """Load each directory with ``bertkit.load_task_model(d, **load_options)`` (device, engine, dtype, ...)."""
        if isinstance(directories, str | os.PathLike):
            raise TypeError("Ensemble.from_pretrained takes a list of directories")
        return cls([load_task_model(d, **load_options) for d in directories], weights)

    def __len__(self) -> int:
        return len(self.models)

    # ---- outputs --------------------------------------------------------------------------
    def outputs(self, data: TaskData, batch_size: int | None = None, **long_inputs: Any) -> np.ndarray:
        """The weighted mean of the members' outputs: (n, L) probabilities in ``labels`` order, or (n,) scores.
        long_inputs: ``long_inputs``/``stride``/``window_pooling`` for every member (``TaskModel.outputs``)."""
        total = None
        for m, cols, w in zip(self.models, self.columns, self.weights, strict=True):
            out = m.outputs(data, batch_size, **long_inputs).astype(np.float64)
            out = out if self.task == "regression" else out[:, cols]
            total = w * out if total is None else total + w * out
        assert total is not None
        return total

    def word_outputs(self, data: TaskData, batch_size: int | None = None) -> list[np.ndarray]:
        """NER: per sentence, the weighted mean of the members' (n_words, L) word tag probabilities."""
        total: list[np.ndarray] | None = None
        for m, cols, w in zip(self.models, self.columns, self.weights, strict=True):
            out = [w * p[:, cols].astype(np.float64) for p in m.word_outputs(data, batch_size)]
            total = out if total is None else [a + b for a, b in zip(total, out, strict=True)]
        assert total is not None
        return total

    def decision_thresholds(self, threshold: Choice = None) -> tuple[np.ndarray, str]:
        """(L,) multi-label thresholds and words saying which: tuned on the ensemble if it was, else the members'
        weighted mean ("tuned": of their tuned ones, each member must have them); "fixed" or a number as given."""
        if self.thresholds is not None or threshold not in (None, "tuned"):
            return decision_thresholds(threshold, self.thresholds, self.labels)
        per_member = [m.decision_thresholds(threshold)[0][cols] for m, cols in zip(self.models, self.columns,
                                                                                   strict=True)]
        mean = np.average(np.stack(per_member), axis=0, weights=self.weights)
        shown = ", ".join(f"{n}={v:.3f}" for n, v in zip(self.labels, mean, strict=True))
        return mean, f"the mean of the members' thresholds ({shown})"

    def tune_thresholds(self, dev: TaskData, batch_size: int | None = None) -> dict[str, float]:
        """Tune one threshold per label on the averaged dev probabilities; the ensemble then decides with them."""
        if self.task != "multilabel":
            raise ValueError(f"thresholds are tuned for multilabel models, this ensemble does {self.task}")
        tuned = tune_thresholds(self.outputs(dev, batch_size), self._truth(dev))
        self.thresholds = {n: float(t) for n, t in zip(self.labels, tuned, strict=True)}
        log.info("ensemble tuned on %s: %s", dev.source, self.decision_thresholds("tuned")[1])
        return dict(self.thresholds)

    # ---- the TaskModel interface ----------------------------------------------------------
    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], pairs: Sequence[str] | None = None,
                batch_size: int | None = None, threshold: Choice = None, **long_inputs: Any) -> list[dict[str, Any]]:
        """As ``TaskModel.predict``: {"label", "probabilities"}, {"labels", "probabilities"}, {"score"}, or for NER
        {"words", "tags", "entities"}. long_inputs: as ``outputs`` (sequence tasks; NER ensembles truncate)."""
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list")
        if not texts:
            return []
        if self.task == "ner":  # texts are word lists (or strings, split on whitespace), as TaskModel.predict
            words = [t.split() if isinstance(t, str) else list(t) for t in texts]
            data = TaskData("ner", [], None, [["O"] * len(w) for w in words], words, "input")
            probs = self.word_outputs(data, batch_size)
            return [ner_prediction(w, self._tags(p), self.scheme) for w, p in zip(words, probs, strict=True)]
        if self.task == "pair-classification" and pairs is None:
            raise ValueError("this ensemble classifies text pairs: pass pairs=[...]")
        data = TaskData(self.task, list(texts), None if pairs is None else list(pairs), [], None, "input")
        cuts = self.decision_thresholds(threshold)[0] if self.task == "multilabel" else None
        return sequence_predictions(self.task, self.labels, self.outputs(data, batch_size, **long_inputs), cuts)

    def evaluate(self, data: TaskData, batch_size: int | None = None, threshold: Choice = None,
                 **long_inputs: Any) -> dict[str, Any]:
        """As ``TaskModel.evaluate`` on the averaged outputs; ``loss`` is the task's loss of those outputs."""
        if data.task != self.task and {data.task, self.task} != {"classification", "pair-classification"}:
            raise ValueError(f"{data.source}: data is for task {data.task!r}, this ensemble does {self.task!r}")
        if self.task == "ner":
            check_labels_among(data, self.labels, f"not among the ensemble's tags ({', '.join(self.labels)})",
                               "the ensemble cannot predict them")
            probs = self.word_outputs(data, batch_size)
            gold = np.concatenate([[self.label2id[t] for t in tags] for tags in data.labels]).astype(np.int64)
            loss = _loss("ner", np.concatenate(probs), gold)  # over words: each is tagged at its first sub-word
            return {"loss": loss, **ner_metrics(data.labels, [self._tags(p) for p in probs], self.scheme)}
        cuts = self.decision_thresholds(threshold)[0] if self.task == "multilabel" else None
        truth = self._truth(data)
        outputs = self.outputs(data, batch_size, **long_inputs)
        return {"loss": _loss(self.task, outputs, truth),
                **sequence_metrics(self.task, self.labels, outputs, truth, cuts)}

    def _tags(self, word_probs: np.ndarray) -> list[str]:
        return [self.labels[i] for i in word_probs.argmax(axis=1)]

    def _truth(self, data: TaskData) -> np.ndarray:
        """(n,) class ids, (n, L) 0/1 or (n,) floats of labelled data, in the ensemble's label order."""
        if not data.labels:
            raise ValueError(f"{data.source}: no labels to score against")
        if self.task == "regression":
            return np.array(data.labels, dtype=np.float64)
        check_labels_among(data, self.labels, f"not among the ensemble's labels ({', '.join(self.labels)})",
                           "the ensemble cannot predict them")
        if self.task == "multilabel":
            truth = np.zeros((len(data), len(self.labels)), dtype=np.int64)
            for i, names in enumerate(data.labels):
                truth[i, [self.label2id[n] for n in names]] = 1
            return truth
        return np.array([self.label2id[n] for n in data.labels], dtype=np.int64)


def _normalised(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} ensemble members")
    if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) == 0:
        raise ValueError(f"ensemble weights must be finite, non-negative and not all 0, got {w}")
    return np.array(w) / sum(w)


def _loss(task: str, outputs: np.ndarray, truth: np.ndarray) -> float:
    """The loss the members train with, of the averaged outputs: cross-entropy (classification, pairs, NER words),
    binary cross-entropy (multi-label), MSE (regression)."""
    if task == "regression":
        return float(np.mean((outputs - truth) ** 2))
    p = np.clip(outputs, 1e-12, 1 - 1e-12)
    if task == "multilabel":
        return float(-np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(truth)), truth])))
