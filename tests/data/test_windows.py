"""Windows over long inputs: coverage, overlap, the short-text case, and the most-central rule."""

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.windows import central_window, check_stride, pool_windows, weighted_mean, window_spans


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), size=st.integers(1, 64), data=st.data())
def test_windows_cover_every_token_with_the_declared_overlap(n, size, data):
    stride = data.draw(st.integers(0, size - 1))
    spans = window_spans(n, size, stride)
    if n <= size:
        assert spans == [(0, n)]  # one window: chunking a short text is truncation
        return
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(e - s == size for s, e in spans)
    for (s0, e0), (s1, _) in pairwise(spans):
        assert s1 > s0  # always advances
        assert e0 - s1 >= stride  # at least the declared overlap (the last window may overlap more)
    for (_, e0), (s1, _) in pairwise(spans[:-1]):
        assert e0 - s1 == stride  # exactly it between all but the last pair
    covered = np.zeros(n, bool)
    for s, e in spans:
        covered[s:e] = True
    assert covered.all()
    best = central_window(spans, n)
    assert ((best >= 0) & (best < len(spans))).all()
    for t in range(n):  # the chosen window contains the token and no other window holds it more centrally
        s, e = spans[best[t]]
        assert s <= t < e
        mine = min(t - s, e - 1 - t)
        assert all(min(t - a, b - 1 - t) <= mine for a, b in spans if a <= t < b)


@pytest.mark.parametrize("stride,size", [(8, 8), (9, 8), (-1, 8)])
def test_a_stride_that_does_not_advance_is_refused(stride, size):
    with pytest.raises(ValueError, match="stride"):
        check_stride(stride, size)
    with pytest.raises(ValueError, match="stride"):
        window_spans(100, size, stride)


def test_pooling_and_weighted_mean():
    x = np.array([[1.0, 4.0], [3.0, 0.0]], np.float32)
    assert pool_windows(x, "mean").tolist() == [2.0, 2.0]
    assert pool_windows(x, "max").tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="mean, max"):
        pool_windows(x, "median")
    assert np.allclose(weighted_mean(x, [3, 1]), [1.5, 3.0])
    assert weighted_mean(x, [3, 1]).dtype == np.float32
