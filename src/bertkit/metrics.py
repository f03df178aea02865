"""Evaluation metrics in plain numpy, with the semantics of scikit-learn and seqeval.

Classification: accuracy, macro/micro F1, Matthews correlation (multi-class, as sklearn), per-label
precision/recall/F1/support.
Regression: Pearson and Spearman (average ranks for ties). Tagging: entity-level precision,
recall and F1 over BIO spans, where a span counts only when its type and both boundaries match
(seqeval's default CoNLL chunking: an ``I-X`` that does not continue an ``X`` span starts one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_arrays(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred {p.shape}")
    if t.size == 0:
        raise ValueError("no examples to score")
    return t, p


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    t, p = _as_arrays(y_true, y_pred)
    return float((t == p).mean())


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> np.ndarray:
    """(n_labels, n_labels) counts, rows = true label, columns = predicted, in ``labels`` order."""
    t, p = _as_arrays(y_true, y_pred)
    labels = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    index = {v: i for i, v in enumerate(labels.tolist())}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(t.tolist(), p.tolist(), strict=True):
        cm[index[a], index[b]] += 1
    return cm


def f1(y_true: Sequence, y_pred: Sequence, average: str = "macro") -> float:
    """F1 for single-label (1-D) or multi-label (2-D 0/1) targets; ``average`` is macro or micro."""
    t, p = _as_arrays(y_true, y_pred)
    if t.ndim == 1:
        labels = np.unique(np.concatenate([t, p]))
        t = (t[:, None] == labels[None, :])
        p = (p[:, None] == labels[None, :])
    t, p = t.astype(bool), p.astype(bool)
    tp = (t & p).sum(0).astype(float)
    fp = (~t & p).sum(0).astype(float)
    fn = (t & ~p).sum(0).astype(float)
    if average == "micro":
        return _f1(tp.sum(), fp.sum(), fn.sum())
    if average == "macro":
        return float(np.mean([_f1(a, b, c) for a, b, c in zip(tp, fp, fn, strict=True)]))
    raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")


def per_label_scores(y_true: Sequence, y_pred: Sequence, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each label, as scikit-learn's ``precision_recall_fscore_support``
    (``average=None``, ``zero_division=0``, ``labels=range(len(names))``). y: (n,) class ids, or (n, L) 0/1 for
    multi-label; ``names[i]`` names id / column i. Labels absent from both sides score 0 with support 0."""
    t, p = _as_arrays(y_true, y_pred)
    if t.ndim == 1:
        ids = np.arange(len(names))
        t, p = t[:, None] == ids[None, :], p[:, None] == ids[None, :]
    elif t.shape[1] != len(names):
        raise ValueError(f"{t.shape[1]} label columns, {len(names)} names")
    t, p = t.astype(bool), p.astype(bool)
    tp = (t & p).sum(0)
    n_pred, n_true = p.sum(0), t.sum(0)
    out = {}
    for i, name in enumerate(names):
        precision = tp[i] / n_pred[i] if n_pred[i] else 0.0
        recall = tp[i] / n_true[i] if n_true[i] else 0.0
        out[str(name)] = {"precision": float(precision), "recall": float(recall),
                          "f1": _f1(tp[i], n_pred[i] - tp[i], n_true[i] - tp[i]), "support": int(n_true[i])}
    return out


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(y_true: Sequence, y_pred: Sequence) -> float:
    """Multi-class MCC (Gorodkin's R_K), 0.0 where it is undefined, as scikit-learn."""
    cm = confusion_matrix(y_true, y_pred).astype(float)
    t_sum, p_sum = cm.sum(1), cm.sum(0)
    n, correct = cm.sum(), np.trace(cm)
    cov_ytyp = correct * n - t_sum @ p_sum
    cov_ypyp = n**2 - p_sum @ p_sum
    cov_ytyt = n**2 - t_sum @ t_sum
    denom = np.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denom) if denom else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r as scipy computes it: centred, each side scaled by its largest magnitude before the norms (so
    values of 1e-200 do not underflow to a zero denominator), clipped to [-1, 1]; 0.0 for a constant side."""
    a, b = _as_arrays(x, y)
    a, b = a.astype(float) - np.mean(a), b.astype(float) - np.mean(b)
    scale_a, scale_b = np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)
    if scale_a == 0 or scale_b == 0:
        return 0.0
    a, b = a / scale_a, b / scale_b
    r = np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b))
    return float(np.clip(r, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = _as_arrays(x, y)
    return pearson(_ranks(a.astype(float)), _ranks(b.astype(float)))


# ---- entity-level (BIO) -------------------------------------------------------------------
def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """BIO tags of one sentence -> {(type, start, end_exclusive)}, CoNLL chunking as seqeval."""
    spans: set[tuple[str, int, int]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, t = tag.partition("-")
        # Close the open span unless this tag continues it.
        if start >= 0 and not (prefix == "I" and t == kind):
            spans.add((kind, start, i))
            start, kind = -1, ""
        if prefix == "B" or (prefix == "I" and start < 0):
            start, kind = i, t
    return spans


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entity spans of all sentences."""
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sentences, {len(pred_tags)} predicted")
    n_true = n_pred = n_hit = 0
    for i, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags, {len(p)} predicted")
        ts, ps = entity_spans(t), entity_spans(p)
        n_true, n_pred, n_hit = n_true + len(ts), n_pred + len(ps), n_hit + len(ts & ps)
    precision = n_hit / n_pred if n_pred else 0.0
    recall = n_hit / n_true if n_true else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f}
