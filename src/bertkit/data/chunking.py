"""Long inputs cut into windows that run as ordinary sequences, and the windows' results put back per example.

``chunk_texts`` / ``chunk_words`` tokenize a batch the way truncation does; every input that fits in ``max_length``
keeps exactly the ids truncation gives it (one window: chunking a short text *is* truncation), every longer one
is re-tokenized without specials, cut by ``windows.window_spans`` and each window wrapped in the model's template
again (``[CLS] window [SEP]``), so the padding-free engine batches windows like any other sequence.

Pairs: the first text (a query, a hypothesis) stays whole in every window and the second one (the passage) is
windowed; a first text that leaves no room for the second is an error naming the sizes.

``stride`` is the overlap of consecutive windows in tokens (transformers' ``stride``); None means a quarter of the
window (``default_stride``), which gives every token at least an eighth of a window of context on each side in
the window it is read from.

``reassemble`` turns window logits back into one result per example: sequence tasks pool the windows' logits
(mean or max), token tasks take each token's logits from the window where it is most central.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from bertkit.data.tokenizer import Tokenizer
from bertkit.data.windows import LONG_INPUTS, WINDOW_POOLING, central_window, check_stride, pool_windows, window_spans
from bertkit.errors import ConfigError

log = logging.getLogger("bertkit")

UNTRUNCATED = 10**9  # a max_length no text reaches: the tokenizer's way of saying "do not truncate"


def default_stride(size: int) -> int:
    """The overlap used when none is given: a quarter of the window (``size`` content tokens)."""
    return size // 4


def tokens_read(n: int, max_length: int, n_special: int, stride: int | None) -> int:
    """Tokens the model runs on for an input of ``n`` tokens (specials included) when chunking: every window's,
    overlaps and each window's specials counted (what a token budget must count)."""
    size = max_length - n_special
    if n <= max_length:
        return n
    spans = window_spans(n - n_special, size, default_stride(size) if stride is None else stride)
    return sum(e - s + n_special for s, e in spans)


def check_long_inputs(long_inputs: str) -> str:
    if long_inputs not in LONG_INPUTS:
        raise ConfigError(f"long_inputs must be one of {', '.join(LONG_INPUTS)}, got {long_inputs!r}")
    return long_inputs


def check_window_pooling(how: str) -> str:
    if how not in WINDOW_POOLING:
        raise ConfigError(f"window_pooling must be one of {', '.join(WINDOW_POOLING)}, got {how!r}")
    return how


@dataclass
class Windows:
    """Windows of a batch of inputs: each row of ``ids`` is one window; ``owner`` maps it to its input.

    ids, type_ids      per window, specials included (lists of ints)
    owner              (n_windows,) index of the input each window comes from, non-decreasing
    spans              per window, the [start, end) of its content tokens within its input's content tokens
    starts             (n_windows,) position of the window's first content token in its ids (windowed inputs)
    word_ids           token tasks: per window, the word of each token (None for specials)
    example_word_ids   token tasks: per input, the word of each token of what ``reassemble`` returns for it
    n_inputs, n_windowed  inputs, and inputs longer than one window
    """

    ids: list[list[int]]
    type_ids: list[list[int]]
    owner: np.ndarray
    spans: list[tuple[int, int]]
    starts: np.ndarray
    n_inputs: int
    n_windowed: int
    word_ids: list[list[int | None]] | None = None
    example_word_ids: list[list[int | None]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """(n_windows,) content tokens of each window (what a length-weighted mean weighs)."""
        return np.fromiter((e - s for s, e in self.spans), dtype=np.int64, count=len(self.spans))

    def ranges(self) -> list[tuple[int, int]]:
        """[(first, end_exclusive)] of each input's windows, in input order (every input has at least one)."""
        bounds = np.flatnonzero(np.diff(self.owner, prepend=-1, append=self.n_inputs + 1))
        return list(pairwise(bounds.tolist()))

    def log(self, source: object, max_length: int) -> None:
        if self.n_windowed:
            log.info("%s: %d of %d inputs were longer than max_length=%d tokens and were cut into windows (%d "
                     "windows in all)", source, self.n_windowed, self.n_inputs, max_length, len(self.ids))


def _content_start(tokenizer: Tokenizer, first: Sequence[int] | None) -> int:
    """Where the (second, for pairs) text's tokens start inside the template."""
    if first is None:
        return tokenizer.build_inputs([-1])[0].index(-1)
    return tokenizer.build_inputs(list(first), [-1])[0].index(-1)


def chunk_texts(tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                stride: int | None) -> Windows:
    """Texts (or pairs, the second text windowed) -> windows of at most ``max_length`` tokens each."""
    batch = tokenizer.encode(texts, pairs, max_length)
    ids, types, owner, spans, starts = [], [], [], [], []
    n_windowed = 0
    plain_a = plain_b = None
    long_rows = [i for i, x in enumerate(batch.ids) if len(x) >= max_length]
    if long_rows:  # only these can have been cut: tokenize them again, whole and without specials
        plain_a = dict(zip(long_rows, tokenizer.encode_plain([texts[i] for i in long_rows]), strict=True))
        if pairs is not None:
            plain_b = dict(zip(long_rows, tokenizer.encode_plain([pairs[i] for i in long_rows]), strict=True))
    n_special = tokenizer.num_special_tokens(pairs is not None)
    if stride is not None:  # refused up front, whether or not this batch has a long input
        check_stride(stride, max_length - n_special)
    for i, (row, row_types) in enumerate(zip(batch.ids, batch.type_ids, strict=True)):
        content = None if plain_a is None or i not in plain_a else (plain_a[i] if plain_b is None else plain_b[i])
        first = None if plain_b is None or i not in plain_b else plain_a[i]
        room = max_length - n_special - (len(first) if first is not None else 0)
        if content is None or len(content) <= room:  # it fits: what truncation gives
            ids.append(row)
            types.append(row_types)
            owner.append(i)
            spans.append((0, len(row) - n_special))
            starts.append(0)
            continue
        if room <= 0:
            raise ConfigError(f"input {i}: its first text has {len(first or [])} tokens and the pair template "
                              f"{n_special} special tokens, which leaves no room for the second text in "
                              f"max_length={max_length}; raise max_length or shorten the first text")
        step_stride = default_stride(room) if stride is None else stride
        if stride is not None and stride >= room:
            check_stride(stride, room, where=f"--stride (input {i}: the window holds {room} tokens of the "
                                             f"second text)")
        start = _content_start(tokenizer, first)
        n_windowed += 1
        for s, e in window_spans(len(content), room, step_stride):
            w_ids, w_types = (tokenizer.build_inputs(content[s:e]) if first is None
                              else tokenizer.build_inputs(first, content[s:e]))
            ids.append(w_ids)
            types.append(w_types)
            owner.append(i)
            spans.append((s, e))
            starts.append(start)
    return Windows(ids, types, np.asarray(owner, np.int64), spans, np.asarray(starts, np.int64), len(texts),
                   n_windowed)


def chunk_words(tokenizer: Tokenizer, words: list[list[str]], max_length: int,
                stride: int | None) -> Windows:
    """Pre-split words (token tasks) -> windows, with the word of each token per window and per input."""
    batch, word_ids = tokenizer.encode_words(words, max_length)
    long_rows = [i for i, x in enumerate(batch.ids) if len(x) >= max_length]
    full = {}
    if long_rows:
        fb, fw = tokenizer.encode_words([words[i] for i in long_rows], UNTRUNCATED)
        full = {i: (a, w) for i, a, w in zip(long_rows, fb.ids, fw, strict=True)}
    n_special = tokenizer.num_special_tokens(False)
    lead = _content_start(tokenizer, None)
    size = max_length - n_special
    step_stride = default_stride(size) if stride is None else stride
    check_stride(step_stride, size)
    ids, types, owner, spans, starts, wids, example_wids = [], [], [], [], [], [], []
    n_windowed = 0
    for i, (row, row_types, row_wids) in enumerate(zip(batch.ids, batch.type_ids, word_ids, strict=True)):
        if i not in full or len(full[i][0]) <= max_length:
            ids.append(row)
            types.append(row_types)
            wids.append(row_wids)
            example_wids.append(row_wids)
            owner.append(i)
            spans.append((0, len(row) - n_special))
            starts.append(lead)
            continue
        all_ids, all_wids = full[i]
        content, content_wids = all_ids[lead:lead + len(all_ids) - n_special], all_wids[lead:lead + len(all_ids)
                                                                                        - n_special]
        example_wids.append(content_wids)
        n_windowed += 1
        for s, e in window_spans(len(content), size, step_stride):
            w_ids, w_types = tokenizer.build_inputs(content[s:e])
            ids.append(w_ids)
            types.append(w_types)
            wids.append([None] * lead + content_wids[s:e] + [None] * (len(w_ids) - lead - (e - s)))
            owner.append(i)
            spans.append((s, e))
            starts.append(lead)
    return Windows(ids, types, np.asarray(owner, np.int64), spans, np.asarray(starts, np.int64), len(words),
                   n_windowed, wids, example_wids)


def window_token_labels(labels: Sequence[int], windows: Windows, ignore: int) -> list[list[int]]:
    """Token labels of each window from its input's labels (aligned to the tokens ``reassemble`` returns for it:
    the input's content tokens when it was windowed): ``ignore`` on the specials."""
    out = []
    for w, (s, e) in enumerate(windows.spans):
        i = int(windows.owner[w])
        own = labels[i]
        n = len(windows.ids[w])
        if _is_single(windows, w):
            out.append(list(own))
            continue
        lead = int(windows.starts[w])
        out.append([ignore] * lead + list(own[s:e]) + [ignore] * (n - lead - (e - s)))
    return out


def _is_single(windows: Windows, w: int) -> bool:
    """Whether window ``w`` is its input's only one (the input fit, or was exactly one window long)."""
    i = windows.owner[w]
    before = w > 0 and windows.owner[w - 1] == i
    after = w + 1 < len(windows.owner) and windows.owner[w + 1] == i
    return not (before or after)


def reassemble(window_logits: Sequence[np.ndarray], windows: Windows, token_task: bool,
               pooling: str = "mean") -> list[np.ndarray]:
    """Per-window logits -> per-input logits.

    Sequence tasks: ``(k,)`` per window -> the mean or max over the input's windows ``(k,)``.
    Token tasks: ``(n_tokens_w, k)`` per window -> ``(n_content, k)``, each token's row from the window where it is
    most central (an input with one window keeps its rows as they are, specials included).
    """
    out: list[np.ndarray] = []
    for a, b in windows.ranges():
        if b - a == 1:
            out.append(window_logits[a])
        elif not token_task:
            out.append(pool_windows(np.stack(window_logits[a:b]), pooling))
        else:
            spans = windows.spans[a:b]
            n = spans[-1][1]
            best = central_window(spans, n)
            rows = np.empty((n, window_logits[a].shape[1]), dtype=window_logits[a].dtype)
            for k, (s, e) in enumerate(spans):
                mine = np.flatnonzero(best[s:e] == k)
                lead = int(windows.starts[a + k])
                rows[s + mine] = window_logits[a + k][lead + mine]
            out.append(rows)
    return out
