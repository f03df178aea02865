"""Reassembly of window results (hypothesis over lengths and strides), without a model."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.chunking import Windows, reassemble
from bertkit.data.windows import central_window, window_spans


def _windows(lengths, size, stride, lead=1, trail=1):
    owner, spans, ids = [], [], []
    for i, n in enumerate(lengths):
        for s, e in window_spans(n, size, stride):
            owner.append(i)
            spans.append((s, e))
            ids.append([0] * (lead + e - s + trail))
    n_windowed = sum(len(window_spans(n, size, stride)) > 1 for n in lengths)
    return Windows(ids, [[0] * len(x) for x in ids], np.array(owner), spans, np.full(len(ids), lead), len(lengths),
                   n_windowed)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 120), min_size=1, max_size=5), size=st.integers(2, 40), data=st.data())
def test_token_rows_come_from_the_most_central_window(lengths, size, data):
    stride = data.draw(st.integers(0, size - 1))
    win = _windows(lengths, size, stride)
    # each window's row r holds (window index, token position in the input) so the gather can be read back
    logits = []
    for w, (s, e) in enumerate(win.spans):
        rows = np.full((len(win.ids[w]), 2), -1.0, np.float32)
        rows[1:1 + e - s, 0] = w
        rows[1:1 + e - s, 1] = np.arange(s, e)
        logits.append(rows)
    out = reassemble(logits, win, token_task=True)
    assert len(out) == len(lengths)
    first = 0
    for i, n in enumerate(lengths):
        spans = window_spans(n, size, stride)
        if len(spans) == 1:  # one window: its rows as they are, specials included (what truncation gives)
            assert out[i] is logits[first]
        else:
            assert out[i].shape == (n, 2)
            assert out[i][:, 1].tolist() == list(range(n))  # every token, in order
            assert (out[i][:, 0] - first == central_window(spans, n)).all()
        first += len(spans)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 120), min_size=1, max_size=5), size=st.integers(2, 40), data=st.data())
def test_sequence_logits_are_pooled_per_input(lengths, size, data):
    stride = data.draw(st.integers(0, size - 1))
    win = _windows(lengths, size, stride)
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=3).astype(np.float32) for _ in win.ids]
    for how in ("mean", "max"):
        out = reassemble(logits, win, token_task=False, pooling=how)
        for i in range(len(lengths)):
            mine = np.stack([logits[w] for w in np.flatnonzero(win.owner == i)])
            if len(mine) == 1:
                assert np.array_equal(out[i], mine[0])  # bit for bit: no pooling of a single window
            else:
                assert np.allclose(out[i], mine.mean(0) if how == "mean" else mine.max(0))
