"""Per-label thresholds: tuning maximises each label's F1 (checked by brute force), recovers a known cut, keeps 0.5
where dev cannot tell; the choice of thresholds (tuned / fixed / a number) and bad saved values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit import metrics as M
from bertkit.thresholds import check_thresholds, decision_thresholds, parse_threshold, tune_thresholds


def f1_at(p, t, cut):
    return M.f1(t[:, None], (p >= cut)[:, None].astype(int), "macro")


def test_recovers_a_known_threshold():
    """Labels that are exactly p >= 0.3 (column 0) and p >= 0.8 (column 1): the tuned cut separates them perfectly
    and sits between the nearest probabilities on either side."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (400, 2))
    truth = np.stack([p[:, 0] >= 0.3, p[:, 1] >= 0.8], axis=1).astype(int)
    cuts = tune_thresholds(p, truth)
    for j, true_cut in enumerate((0.3, 0.8)):
        below, above = p[p[:, j] < true_cut, j].max(), p[p[:, j] >= true_cut, j].min()
        assert below < cuts[j] <= above
        assert cuts[j] == pytest.approx(true_cut, abs=0.01)
        assert ((p[:, j] >= cuts[j]) == truth[:, j].astype(bool)).all()


def test_no_positives_keeps_half_and_ties_go_to_half():
    p = np.array([[0.1, 0.2], [0.3, 0.9], [0.45, 0.7], [0.05, 0.1]])
    truth = np.array([[0, 0], [0, 1], [0, 1], [0, 0]])
    cuts = tune_thresholds(p, truth)
    assert cuts[0] == 0.5  # no positives: nothing to tune on
    assert cuts[1] == 0.5  # every cut in (0.2, 0.7] separates perfectly: the one closest to 0.5


def test_tuned_cut_moves_only_when_it_changes_predictions():
    """Positives at 0.35 and 0.4, negatives at 0.1: a cut in (0.1, 0.35] is best, none of which is 0.5, so it is
    the midpoint of that interval."""
    p = np.array([[0.1], [0.35], [0.4]])
    cuts = tune_thresholds(p, np.array([[0], [1], [1]]))
    assert cuts[0] == pytest.approx((0.1 + 0.35) / 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0]), st.booleans()),
                min_size=1, max_size=30))
def test_tuned_f1_is_the_best_over_every_cut(rows):
    """Brute force: no threshold on a fine grid (or at any probability) beats the tuned one's F1, and the tuned
    F1 is at least that of the fixed 0.5."""
    p = np.array([[x] for x, _ in rows])
    t = np.array([int(y) for _, y in rows])
    cut = tune_thresholds(p, t[:, None])[0]
    assert 0.0 <= cut <= 1.0
    if t.sum() == 0:
        assert cut == 0.5
        return
    best = f1_at(p[:, 0], t, cut)
    grid = np.r_[np.linspace(0, 1, 201), p[:, 0]]
    assert best >= max(f1_at(p[:, 0], t, c) for c in grid) - 1e-12
    assert best >= f1_at(p[:, 0], t, 0.5)


def test_bad_shapes():
    with pytest.raises(ValueError, match="examples, labels"):
        tune_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))


def test_which_thresholds_are_used():
    labels = ["a", "b"]
    tuned = {"b": 0.7, "a": 0.2}
    assert decision_thresholds(None, tuned, labels)[0].tolist() == [0.2, 0.7]
    assert "tuned on dev (a=0.200, b=0.700)" in decision_thresholds(None, tuned, labels)[1]
    assert decision_thresholds(None, None, labels)[0].tolist() == [0.5, 0.5]
    assert decision_thresholds("fixed", tuned, labels)[0].tolist() == [0.5, 0.5]
    assert decision_thresholds(0.3, tuned, labels)[0].tolist() == [0.3, 0.3]
    with pytest.raises(ValueError, match="no tuned thresholds"):
        decision_thresholds("tuned", None, labels)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        decision_thresholds(1.5, tuned, labels)
    with pytest.raises(ValueError, match="'fixed' or 'tuned'"):
        decision_thresholds("best", tuned, labels)


def test_saved_thresholds_are_checked():
    assert check_thresholds({"a": 0.2, "b": 1}, ["a", "b"], "f.json") == {"a": 0.2, "b": 1.0}
    with pytest.raises(ValueError, match=r"f.json: 'thresholds' has labels \['a'\], the model \['a', 'b'\]"):
        check_thresholds({"a": 0.2}, ["a", "b"], "f.json")
    with pytest.raises(ValueError, match="threshold of 'b' must be a number in"):
        check_thresholds({"a": 0.2, "b": "high"}, ["a", "b"], "f.json")
    with pytest.raises(ValueError, match="threshold of 'a'"):
        check_thresholds({"a": -0.1, "b": 0.5}, ["a", "b"], "f.json")


def test_parse_threshold():
    assert parse_threshold("0.35") == 0.35
    assert parse_threshold("fixed") == "fixed" and parse_threshold("tuned") == "tuned"
    for bad in ("x", "2", "-0.5"):
        with pytest.raises(ValueError, match="--threshold"):
            parse_threshold(bad)
