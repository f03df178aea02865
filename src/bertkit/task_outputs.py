"""From a task's outputs to its predictions and metrics, the same for one model and for an ensemble.

Outputs are what a model's logits mean: (n, L) class probabilities (softmax) for classification and pairs, (n, L)
per-label probabilities (sigmoid) for multi-label, (n,) scores for regression; for NER, per sentence, the
(n_words, L) tag probabilities of each word's first sub-word. An ensemble averages these, then decides and scores
exactly as a single model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertkit import metrics as M


def outputs_of(task: str, logits: np.ndarray) -> np.ndarray:
    """(n, L) logits -> (n, L) probabilities, or (n,) scores for regression."""
    if task == "regression":
        return logits[:, 0]
    if task == "multilabel":
        return 1 / (1 + np.exp(-logits))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def sequence_metrics(task: str, labels: Sequence[str], outputs: np.ndarray, truth: np.ndarray,
                     thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of one sequence task. truth: (n,) class ids, (n, L) 0/1, or (n,) floats; thresholds: (L,)
    (multi-label). Classification and multi-label add ``per_label``: {name: {precision, recall, f1, support}}."""
    if task == "regression":
        true = truth.astype(float)
        return {"pearson": M.pearson(true, outputs), "spearman": M.spearman(true, outputs),
                "mse": float(np.mean((outputs - true) ** 2))}
    if task == "multilabel":
        pred = (outputs >= thresholds[None, :]).astype(int)
        true = truth.astype(int)
        return {"micro_f1": M.f1(true, pred, "micro"), "macro_f1": M.f1(true, pred, "macro"),
                "subset_accuracy": float(np.mean((pred == true).all(axis=1))),
                "per_label": M.per_label_scores(true, pred, labels)}
    pred = outputs.argmax(axis=1)
    return {"accuracy": M.accuracy(truth, pred), "macro_f1": M.f1(truth, pred, "macro"),
            "micro_f1": M.f1(truth, pred, "micro"), "mcc": M.matthews_corrcoef(truth, pred),
            "per_label": M.per_label_scores(truth, pred, labels)}


def sequence_predictions(task: str, labels: Sequence[str], outputs: np.ndarray,
                         thresholds: np.ndarray | None = None) -> list[dict[str, Any]]:
    """classification: {"label", "probabilities": {name: p}}; multilabel: {"labels", "probabilities"};
    regression: {"score"}."""
    if task == "regression":
        return [{"score": float(x)} for x in outputs]

    def probabilities(p: np.ndarray) -> dict[str, float]:
        return {n: round(float(v), 6) for n, v in zip(labels, p, strict=True)}

    if task == "multilabel":
        return [{"labels": [labels[i] for i in np.flatnonzero(p >= thresholds)], "probabilities": probabilities(p)}
                for p in outputs]
    return [{"label": labels[int(p.argmax())], "probabilities": probabilities(p)} for p in outputs]


def ner_prediction(words: list[str], tags: list[str], scheme: str = "bio") -> dict[str, Any]:
    """One sentence's words and tags -> {"words", "tags", "entities": [{"type", "start", "end", "text"}]}, the
    entities read by the tag scheme (``bertkit.data.tag_schemes``; plain tags have none)."""
    spans = [] if scheme == "plain" else M.entity_spans(tags, scheme)
    entities = [{"type": t, "start": s, "end": e, "text": " ".join(words[s:e])}
                for t, s, e in sorted(spans, key=lambda x: x[1])]
    return {"words": words, "tags": tags, "entities": entities}


def ner_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                scheme: str = "bio") -> dict[str, float]:
    """Entity precision / recall / F1 by the tag scheme (BIO: seqeval's CoNLL chunking; plain: per-tag scores,
    ``metrics.tag_scores``) and the accuracy over all words."""
    out = M.entity_scores(true_tags, pred_tags, scheme)
    out["token_accuracy"] = M.accuracy([t for s in true_tags for t in s], [t for s in pred_tags for t in s])
    return out


def per_label_table(per_label: dict[str, dict[str, float]]) -> list[str]:
    """Lines of a per-label table (precision, recall, F1, support), as papers print it."""
    width = max([5, *map(len, per_label)])
    lines = [f"{'label':<{width}}  precision  recall      f1  support"]
    for name, s in per_label.items():
        lines.append(f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:6.4f}  "
                     f"{s['support']:7d}")
    return lines
