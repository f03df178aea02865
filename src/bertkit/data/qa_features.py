"""Question-answering examples -> model inputs: the question, then a window of the context, in the family's pair
template (``[CLS] question [SEP] context [SEP]``, ``<s> question </s></s> context </s>`` ...).

A context longer than the room the question leaves (``max_length`` less the question and the special tokens) is
cut into windows that overlap by ``doc_stride`` tokens (``data.windows.window_spans`` with the last window cut as
transformers' fast tokenizers cut overflowing tokens, so that the windows are the question-answering pipeline's and
run_qa's). The question is never truncated: a question that leaves no room for the context is an error naming the
sizes (transformers' tokenizer fails there too).

Per window, ``QAFeatures`` keeps what decoding needs to map token spans back to the context: the example it
belongs to, where its context tokens start, their character offsets and word indices. Training labels (start, end)
are token positions within the window; an answer not wholly inside the window points at the first token ([CLS]),
as run_qa labels it, and so does a question without an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertkit.data.features import Features
from bertkit.data.squad import QAExample
from bertkit.data.tokenizer import Tokenizer
from bertkit.data.windows import window_spans


@dataclass
class QAFeatures:
    features: Features  # one row per window: ids, type ids, labels [start, end] (or None)
    example: np.ndarray  # (n_windows,) index of the example each window belongs to
    context_start: np.ndarray  # (n_windows,) position of the window's first context token
    offsets: list[np.ndarray]  # per window (n_context_tokens, 2) character offsets in the example's context
    words: list[np.ndarray]  # per window (n_context_tokens,) word index of each context token (-1: none)

    def __len__(self) -> int:
        return len(self.features)


def answer_positions(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """(first, last) context token of the characters [start_char, end_char) in a window whose tokens have
    ``offsets`` (n, 2); None when the answer is not wholly inside the window (run_qa's rule)."""
    if len(offsets) == 0 or offsets[0, 0] > start_char or offsets[-1, 1] < end_char:
        return None
    first = int(np.searchsorted(offsets[:, 0], start_char, side="right")) - 1  # last token starting at or before
    last = int(np.searchsorted(offsets[:, 1], end_char, side="left"))  # first token ending at or after
    return max(first, 0), min(max(last, first), len(offsets) - 1)


def context_room(where: str, n_question: int, n_context: int, n_special: int, max_length: int,
                 doc_stride: int) -> int:
    """Context tokens a window holds; a ValueError naming the sizes when the question leaves no room, or when a
    context that needs several windows could not advance by them (doc_stride >= room)."""
    room = max_length - n_special - n_question
    if room <= 0:
        raise ValueError(f"{where}: the question has {n_question} tokens, and with {n_special} special tokens that "
                         f"leaves {room} of max_length={max_length} for the context; use a larger max_length or a "
                         "shorter question")
    if n_context > room and doc_stride >= room:
        raise ValueError(f"{where}: doc_stride={doc_stride} must be smaller than the {room} context tokens a window "
                         f"holds (max_length={max_length} less the question's {n_question} and {n_special} special "
                         "tokens)")
    return room


def qa_features(examples: Sequence[QAExample], tokenizer: Tokenizer, max_length: int, doc_stride: int,
                with_labels: bool = False) -> QAFeatures:
    """Windows of every example, in example order (see the module docstring)."""
    encs = tokenizer.encode_pairs_with_offsets([e.question for e in examples], [e.context for e in examples])
    n_special = tokenizer.num_special_tokens(pair=True)
    ids, types, labels, example, starts, offsets, words = [], [], [], [], [], [], []
    for i, (ex, enc) in enumerate(zip(examples, encs, strict=True)):
        n = len(enc.ids_b)
        room = context_room(ex.where, len(enc.ids_a), n, n_special, max_length, doc_stride)
        spans = [(0, n)] if n <= room else window_spans(n, room, doc_stride, align_last=False)
        ctx_start = tokenizer.second_start(len(enc.ids_a))
        all_offsets = np.asarray(enc.offsets_b, dtype=np.int64).reshape(-1, 2)
        all_words = np.array([-1 if w is None else w for w in enc.words_b], dtype=np.int64)
        for s, e in spans:
            window_ids, window_types = tokenizer.build_inputs(enc.ids_a, enc.ids_b[s:e])
            ids.append(window_ids)
            types.append(window_types)
            example.append(i)
            starts.append(ctx_start)
            offsets.append(all_offsets[s:e])
            words.append(all_words[s:e])
            if with_labels:
                pos = None
                if ex.answers:  # the first gold answer is the training target, as in run_qa
                    a = ex.answer_starts[0]
                    pos = answer_positions(all_offsets[s:e], a, a + len(ex.answers[0]))
                labels.append([0, 0] if pos is None else [ctx_start + pos[0], ctx_start + pos[1]])
    feats = Features(ids, types, labels if with_labels else None, None, 0)
    return QAFeatures(feats, np.asarray(example, dtype=np.int64), np.asarray(starts, dtype=np.int64), offsets, words)
