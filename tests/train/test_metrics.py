import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.train import metrics as M

sk = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def test_hand_computed_classification():
    t, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert M.accuracy(t, p) == 0.6
    # per class F1: 0 -> tp1 fp1 fn1 = 0.5; 1 -> tp2 fp1 fn0 = 0.8; 2 -> 0
    assert M.f1(t, p, "macro") == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert M.f1(t, p, "micro") == pytest.approx(0.6)
    assert M.confusion_matrix(t, p).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_against_sklearn(pairs):
    t, p = map(list, zip(*pairs, strict=True))
    assert M.accuracy(t, p) == pytest.approx(sk.accuracy_score(t, p))
    assert M.f1(t, p, "macro") == pytest.approx(sk.f1_score(t, p, average="macro", zero_division=0))
    assert M.f1(t, p, "micro") == pytest.approx(sk.f1_score(t, p, average="micro", zero_division=0))
    assert M.matthews_corrcoef(t, p) == pytest.approx(sk.matthews_corrcoef(t, p), abs=1e-12)


def test_multilabel_against_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 2, (40, 5)), rng.integers(0, 2, (40, 5))
    for avg in ("macro", "micro"):
        assert M.f1(t, p, avg) == pytest.approx(sk.f1_score(t, p, average=avg, zero_division=0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(-10, 10)), min_size=3, max_size=40))
def test_correlations_against_scipy(pairs):
    x, y = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # constant: undefined (np.std of equal floats can round above 0)
        return
    assert M.pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
    assert M.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)


def test_entity_spans_conll_semantics():
    assert M.entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert M.entity_spans(["I-PER", "I-PER"]) == {("PER", 0, 2)}  # I- without B- starts a span
    assert M.entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # type change splits
    assert M.entity_spans(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}


def test_entity_scores_need_exact_type_and_boundaries():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O"]]  # PER boundary wrong, ORG typed as LOC
    s = M.entity_scores(true, pred)
    assert s == {"precision": pytest.approx(1 / 3), "recall": pytest.approx(1 / 3), "f1": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="sentence 0"):
        M.entity_scores([["O"]], [["O", "O"]])


def test_bad_inputs():
    with pytest.raises(ValueError, match="no examples"):
        M.accuracy([], [])
    with pytest.raises(ValueError, match="shape"):
        M.f1([0, 1], [0])
    with pytest.raises(ValueError, match="average"):
        M.f1([0], [0], "weighted")


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(TAGS), st.sampled_from(TAGS)), min_size=1, max_size=12),
                min_size=1, max_size=6))
def test_entity_scores_against_seqeval(sentences):
    seqeval = pytest.importorskip("seqeval.metrics")
    true = [[a for a, _ in s] for s in sentences]
    pred = [[b for _, b in s] for s in sentences]
    got = M.entity_scores(true, pred)
    assert got["precision"] == pytest.approx(seqeval.precision_score(true, pred, zero_division=0))
    assert got["recall"] == pytest.approx(seqeval.recall_score(true, pred, zero_division=0))
    assert got["f1"] == pytest.approx(seqeval.f1_score(true, pred, zero_division=0))
