"""Ranking metrics against hand-computed rankings, and exact search against brute force."""

import math

import numpy as np
import pytest

from bertkit.retrieval.metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k
from bertkit.retrieval.search import exact_search


def test_hand_computed_single_query():
    ranked = ["d3", "d1", "d7", "d2"]
    rel = {"d1": 1, "d2": 2, "d9": 1}
    # DCG = 1/log2(3) + 2/log2(5); ideal gains 2, 1, 1 -> 2 + 1/log2(3) + 1/log2(4)
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    idcg = 2 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, rel, 1) == 0.0
    assert mrr_at_k(ranked, rel, 10) == 0.5 and mrr_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3) and recall_at_k(ranked, rel, 10) == pytest.approx(2 / 3)


def test_perfect_and_empty_runs():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"x": 0}}  # q3 has no relevant doc: skipped
    perfect = evaluate_run({"q1": ["a", "z"], "q2": ["c", "b"]}, qrels)
    assert perfect["ndcg@10"] == 1.0 and perfect["mrr@10"] == 1.0 and perfect["recall@1"] == 0.75
    assert perfect["queries"] == 2
    missing = evaluate_run({"q1": ["a"]}, qrels)  # q2 has no results: scores 0
    assert missing["ndcg@10"] == 0.5 and missing["recall@100"] == 0.5
    with pytest.raises(ValueError, match="no query"):
        evaluate_run({}, {"q": {"d": 0}})


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    scores, idx = exact_search(q, d, k=5, block=10)
    brute = np.argsort(-(q @ d.T), axis=1)[:, :5]
    assert (idx == brute).all()
    assert np.allclose(scores, np.take_along_axis(q @ d.T, brute, axis=1), atol=1e-5)
    assert exact_search(q, d[:3], k=5)[1].shape == (37, 3)
    with pytest.raises(ValueError, match="dimension"):
        exact_search(q, d[:, :4], k=5)
