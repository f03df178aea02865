"""Extractive QA decoding: start/end logits of each window -> the n best answer spans of each question, in
characters of its context (pure numpy).

Scores are the ones transformers' question-answering pipeline gives (transformers 4.x
``QuestionAnsweringPipeline.postprocess``, whose scoring lives on as ``select_starts_ends`` in
``pipelines/document_question_answering.py``):

1. per window, logits of tokens that cannot be part of an answer (the question, special tokens) are set to -10000,
   except the first token ([CLS]); a softmax over the window gives start and end probabilities
2. the no-answer score of the window is ``p_start[CLS] * p_end[CLS]``; the question's is the smallest over its windows
3. a span (s, e) of context tokens with ``s <= e < s + max_answer_length`` scores ``p_start[s] * p_end[e]``; the
   ``top_k`` best of each window are kept
4. a span becomes characters: from the start of the word holding its first token to the end of the word holding its
   last (``align_to_words``; else the tokens' own offsets), as far as those words lie in the window
5. spans of every window with the same text (case-insensitive) are one answer whose scores add up; the answers are
   sorted by score and the first ``top_k`` returned

No answer: with ``null_threshold`` set (v2-style data), the empty answer competes with score ``null`` and wins when
``null - best > null_threshold`` (0: the pipeline's ``handle_impossible_answer=True``); None never answers "".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MASKED = -10000.0  # the pipeline's fill value for tokens outside the context


@dataclass
class Window:
    """One window's logits and where its context lies: ``logits`` (n_tokens, 2) start/end, the context tokens at
    ``context_start`` onward with ``offsets`` (n_context, 2) in characters and ``words`` (n_context,) (-1: none)."""

    logits: np.ndarray
    context_start: int
    offsets: np.ndarray
    words: np.ndarray


def _probabilities(x: np.ndarray, context: slice) -> np.ndarray:
    """(n_tokens,) logits -> softmax over [CLS] and the context tokens, as the pipeline computes it."""
    masked = np.full_like(x, MASKED)
    masked[0] = x[0]
    masked[context] = x[context]
    p = np.exp(masked - masked.max())
    return p / p.sum()


def best_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_length: int
                 ) -> list[tuple[int, int, float]]:
    """The ``top_k`` best (s, e, p_start[s] * p_end[e]) over context tokens with s <= e < s + max_answer_length;
    ``start``/``end`` (n_context,) probabilities. Ties keep the lower (s, e), as the pipeline's argmax does."""
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_length - 1)  # (n, n): invalid spans are 0
    flat = scores.ravel()
    k = min(top_k, flat.size)
    if k == 1:
        best = np.array([int(np.argmax(flat))])
    else:
        part = np.argpartition(-flat, k - 1)[:k]
        best = part[np.lexsort((part, -flat[part]))]
    out = []
    for i in best:
        s, e = divmod(int(i), scores.shape[1])
        if e >= s and e - s < max_answer_length:  # a window with fewer valid spans than top_k
            out.append((s, e, float(flat[i])))
    return out


def _chars(w: Window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Context token span [s, e] of a window -> [start, end) characters."""
    if align_to_words and w.words[s] >= 0 and w.words[e] >= 0:
        return int(w.offsets[w.words == w.words[s], 0].min()), int(w.offsets[w.words == w.words[e], 1].max())
    return int(w.offsets[s, 0]), int(w.offsets[e, 1])


def decode(windows: Sequence[Window], context: str, top_k: int = 1, max_answer_length: int = 15,
           null_threshold: float | None = None, align_to_words: bool = True) -> list[dict]:
    """The ``top_k`` answers of one question: [{"answer", "score", "start", "end"}] (characters of ``context``,
    end exclusive), best first; the no-answer candidate is {"answer": "", "start": 0, "end": 0}."""
    if top_k < 1 or max_answer_length < 1:
        raise ValueError(f"top_k and max_answer_length must be >= 1, got {top_k} and {max_answer_length}")
    answers: dict[str, dict] = {}
    null = 1_000_000.0  # the pipeline's "large and positive" start
    for w in windows:
        n = len(w.offsets)
        ctx = slice(w.context_start, w.context_start + n)
        start, end = _probabilities(w.logits[:, 0], ctx), _probabilities(w.logits[:, 1], ctx)
        null = min(null, float(start[0] * end[0]))
        if n == 0:
            continue
        for s, e, score in best_spans(start[ctx], end[ctx], top_k, max_answer_length):
            a, b = _chars(w, s, e, align_to_words)
            text = context[a:b]
            found = answers.get(text.lower())
            if found is not None:
                found["score"] += score
            else:
                answers[text.lower()] = {"answer": text, "score": score, "start": a, "end": b}
    ranked = sorted(answers.values(), key=lambda x: x["score"], reverse=True)
    no_answer = {"answer": "", "score": null, "start": 0, "end": 0}
    if not ranked:  # an empty context: nothing to extract
        return [no_answer]
    if null_threshold is not None:
        best = ranked[0]["score"]
        if null - best > null_threshold:
            ranked.insert(0, no_answer)
        else:
            ranked.append(no_answer)
            ranked[1:] = sorted(ranked[1:], key=lambda x: x["score"], reverse=True)
    return ranked[:top_k]
