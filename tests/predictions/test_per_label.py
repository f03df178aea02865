"""Per-label precision, recall, F1 and support: hand-computed, and as scikit-learn's
precision_recall_fscore_support (zero_division=0) on random single- and multi-label data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit import metrics as M


def test_hand_computed():
    # class 0: tp1 fp1 fn1; class 1: tp2 fp1 fn0; class 2: tp0 fp0 fn1; class 3: never seen
    t, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    s = M.per_label_scores(t, p, ["a", "b", "c", "d"])
    assert s["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert s["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert s["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # their mean over the classes that occur is the macro F1 M.f1 gives
    assert np.mean([s[n]["f1"] for n in "abc"]) == pytest.approx(M.f1(t, p, "macro"))


def test_multilabel_hand_computed():
    t = np.array([[1, 0], [1, 1], [0, 0]])
    p = np.array([[1, 1], [0, 1], [0, 0]])
    s = M.per_label_scores(t, p, ["x", "y"])
    assert s["x"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert s["y"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    with pytest.raises(ValueError, match="2 label columns, 3 names"):
        M.per_label_scores(t, p, ["x", "y", "z"])


sk = pytest.importorskip("sklearn.metrics")


def check_against_sklearn(t, p, names, labels):
    ours = M.per_label_scores(t, p, names)
    ref = sk.precision_recall_fscore_support(t, p, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(names):
        assert [ours[name][k] for k in ("precision", "recall", "f1")] == pytest.approx([r[i] for r in ref[:3]])
        assert ours[name]["support"] == ref[3][i]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_single_label_against_sklearn(pairs):
    t, p = map(list, zip(*pairs, strict=True))
    check_against_sklearn(t, p, ["a", "b", "c", "d"], [0, 1, 2, 3])


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (30, 4))
    t[:, 3] = 0  # a label with no positives
    check_against_sklearn(t, p, ["a", "b", "c", "d"], None)
