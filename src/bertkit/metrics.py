"""Evaluation metrics in plain numpy, with the semantics of scikit-learn and seqeval.

Classification: accuracy, macro/micro F1, Matthews correlation (multi-class, as sklearn), per-label
precision/recall/F1/support.
Regression: Pearson and Spearman (average ranks for ties). Tagging: entity-level precision,
recall and F1 over the spans of a tag scheme (``bertkit.data.tag_schemes``), where a span counts only when its type
and both boundaries match (BIO: seqeval's default CoNLL chunking, an ``I-X`` that does not continue an ``X`` span
starts one); plain tags: token accuracy and per-tag precision, recall and F1 (``tag_scores``).
Extractive QA: SQuAD exact match and F1 with the official script's normalisation (v2.0's, which also scores
unanswerable questions: an empty gold answer is matched only by an empty prediction).
"""

from __future__ import annotations

import re
import string
from collections import Counter
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


# ---- tagging: entity level (span schemes) or per tag (plain) -------------------------------------------
# prefix letters of each span scheme (bertkit.data.tag_schemes): (begin, inside, last, single)
SCHEME_PREFIXES = {"bio": ("B", "I", None, None), "iob1": ("B", "I", None, None), "bioes": ("B", "I", "E", "S"),
                   "bilou": ("B", "I", "L", "U")}
_PREFIXED = re.compile(r"([BIESLU])-(\S+)")


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; a tag without a prefix -> ``("", tag)``."""
    if tag == "O":
        return "O", ""
    m = _PREFIXED.fullmatch(tag)
    return (m.group(1), m.group(2)) if m else ("", tag)


def entity_spans(tags: Sequence[str], scheme: str = "bio") -> set[tuple[str, int, int]]:
    """Tags of one sentence -> {(type, start, end_exclusive)}; ``bio``/``iob1``: CoNLL chunking as seqeval's
    default mode (a span closes unless the tag continues it, ``B-`` always opens one, so a stray ``I-X`` still
    opens one), ``bioes``/``bilou``: seqeval's strict mode (complete ``B I* E`` / ``S`` entities only)."""
    if scheme in ("bio", "iob1"):
        return _conll_spans(tags)
    if scheme not in SCHEME_PREFIXES:
        raise ValueError(f"no entity spans in tag scheme {scheme!r}; expected one of {', '.join(SCHEME_PREFIXES)}")
    return _strict_spans(tags, *SCHEME_PREFIXES[scheme])


def _conll_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    spans: set[tuple[str, int, int]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = split_tag(tag)
        if start >= 0 and not (prefix == "I" and t == kind):
            spans.add((kind, start, i))
            start, kind = -1, ""
        if prefix == "B" or (prefix == "I" and start < 0):
            start, kind = i, t
    return spans


def _strict_spans(tags: Sequence[str], begin: str, inside: str, last: str, single: str) -> set[tuple[str, int, int]]:
    spans: set[tuple[str, int, int]] = set()
    start, kind = -1, ""
    for i, tag in enumerate(tags):
        prefix, t = split_tag(tag)
        if start >= 0 and t == kind and prefix in (inside, last):
            if prefix == last:
                spans.add((kind, start, i + 1))
                start = -1
            continue
        start = -1  # an open entity not continued is broken: dropped
        if prefix == single:
            spans.add((t, i, i + 1))
        elif prefix == begin:
            start, kind = i, t
    return spans


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                  scheme: str = "bio") -> dict[str, float]:
    """Micro precision, recall and F1 over entity spans of all sentences; ``scheme="plain"``: ``tag_scores``."""
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sentences, {len(pred_tags)} predicted")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags, {len(p)} predicted")
    if scheme == "plain":
        return tag_scores(true_tags, pred_tags)
    n_true = n_pred = n_hit = 0
    for t, p in zip(true_tags, pred_tags, strict=True):
        ts, ps = entity_spans(t, scheme), entity_spans(p, scheme)
        n_true, n_pred, n_hit = n_true + len(ts), n_pred + len(ps), n_hit + len(ts & ps)
    precision = n_hit / n_pred if n_pred else 0.0
    recall = n_hit / n_true if n_true else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f}


def tag_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Per-token scores of plain tags (part of speech): ``token_accuracy``; ``precision``/``recall``/``f1``
    micro-averaged over tags (each token has one tag on each side, so all three equal the accuracy, as sklearn's
    micro average); ``macro_precision``/``macro_recall``/``macro_f1`` over the tags seen on either side; and
    ``precision/TAG``, ``recall/TAG``, ``f1/TAG`` for each tag (0.0 where undefined, as sklearn's
    zero_division=0)."""
    t = np.array([x for s in true_tags for x in s], dtype=object)
    p = np.array([x for s in pred_tags for x in s], dtype=object)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true tags, {p.size} predicted")
    acc = accuracy(t.astype(str), p.astype(str))
    out = {"token_accuracy": acc, "precision": acc, "recall": acc, "f1": acc}
    per: dict[str, tuple[float, float, float]] = {}
    for tag in sorted(set(t.tolist()) | set(p.tolist())):
        tp = float(np.sum((t == tag) & (p == tag)))
        n_pred, n_true = float(np.sum(p == tag)), float(np.sum(t == tag))
        prec, rec = (tp / n_pred if n_pred else 0.0), (tp / n_true if n_true else 0.0)
        per[tag] = (prec, rec, _f1(tp, n_pred - tp, n_true - tp))
    for i, name in enumerate(("precision", "recall", "f1")):
        out[f"macro_{name}"] = float(np.mean([v[i] for v in per.values()]))
    for tag, (prec, rec, f) in per.items():
        out.update({f"precision/{tag}": prec, f"recall/{tag}": rec, f"f1/{tag}": f})
    return out


# ---- extractive question answering (SQuAD) -------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles (a/an/the), single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _answer_f1(gold: str, pred: str) -> float:
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:  # an unanswerable question (or an empty answer) scores 1 only against an empty one
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(gold_answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's gold answers, averaged over questions
    (official SQuAD v2.0 script; gold answers that normalise to nothing are dropped, and a question left
    without any is unanswerable: only "" matches it)."""
    if len(gold_answers) != len(predictions):
        raise ValueError(f"{len(gold_answers)} questions with gold answers, {len(predictions)} predictions")
    em = f1_sum = 0.0
    for golds, pred in zip(gold_answers, predictions, strict=True):
        golds = [a for a in golds if normalize_answer(a)] or [""]
        em += max(float(normalize_answer(a) == normalize_answer(pred)) for a in golds)
        f1_sum += max(_answer_f1(a, pred) for a in golds)
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1_sum / n}
