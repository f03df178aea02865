"""Long inputs as overlapping windows: where to cut a token sequence, and how to put the results back together.

A text of ``n`` content tokens (specials not counted) longer than ``size`` is cut into windows of ``size`` tokens;
consecutive windows share ``stride`` tokens (the overlap, as transformers' ``stride`` and SQuAD's ``doc_stride``),
so each starts ``size - stride`` tokens after the previous one and the last one ends at ``n``. A text of at most
``size`` tokens is one window: chunking it gives what truncation gives.

Reassembly, per task:

``pool_windows``    (n_windows, k) -> (k,): mean or max of the window logits (classification, regression, labels)
``central_window``  for each token, the window where it is most central (token tasks take its logits from there)
``weighted_mean``   (n_windows, dim) -> (dim,): the windows' mean weighted by their token counts (embeddings)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LONG_INPUTS = ("truncate", "chunk")
WINDOW_POOLING = ("mean", "max")


def check_stride(stride: int, size: int, where: str = "--stride") -> None:
    """A window must move forward: 0 <= stride < size (both in tokens)."""
    if stride < 0:
        raise ValueError(f"{where} must be >= 0 tokens, got {stride}")
    if stride >= size:
        raise ValueError(f"{where} {stride} must be smaller than the window ({size} tokens: max_length less the "
                         f"special tokens), or the windows would not advance")


def window_spans(n: int, size: int, stride: int, align_last: bool = True) -> list[tuple[int, int]]:
    """[(start, end_exclusive)] of the windows over ``n`` tokens: ``size`` each, overlapping by ``stride``.

    The last window ends at ``n`` (it may overlap its neighbour by more than ``stride``); with ``align_last=False``
    it starts ``size - stride`` after the previous one and is shorter, as transformers' fast tokenizers cut
    overflowing tokens (extractive QA uses that, so that its windows are the question-answering pipeline's).
    ``n <= size`` -> one window ``(0, n)``; ``n == 0`` -> ``[(0, 0)]`` (an empty text is still one input).
    """
    check_stride(stride, size)
    if n <= size:
        return [(0, n)]
    step = size - stride
    spans = [(s, s + size) for s in range(0, n - size, step)]
    last = n - size if align_last else spans[-1][0] + step
    spans.append((last, n))
    return spans


def central_window(spans: Sequence[tuple[int, int]], n: int) -> np.ndarray:
    """(n,) index of the window in which each token is most central: the largest distance to that window's nearer
    edge (the first such window on ties), as transformers' token-classification stride handling and SQuAD's
    "max context" rule."""
    best = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -1, dtype=np.int64)
    for w, (s, e) in enumerate(spans):
        pos = np.arange(s, e)
        context = np.minimum(pos - s, e - 1 - pos)
        better = context > score[s:e]
        best[s:e][better] = w
        score[s:e][better] = context[better]
    return best


def pool_windows(logits: np.ndarray, how: str = "mean") -> np.ndarray:
    """(n_windows, k) -> (k,): the mean or the element-wise max of the window logits."""
    if how not in WINDOW_POOLING:
        raise ValueError(f"window pooling must be one of {', '.join(WINDOW_POOLING)}, got {how!r}")
    return logits.mean(0) if how == "mean" else logits.max(0)


def weighted_mean(vectors: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """(n_windows, dim), tokens per window -> (dim,): the length-weighted mean (a long text's embedding)."""
    w = np.asarray(lengths, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return (vectors.astype(np.float64) * (w / w.sum())[:, None]).sum(0).astype(vectors.dtype)
