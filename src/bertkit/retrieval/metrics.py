"""Ranking metrics with the semantics of trec_eval / BEIR: NDCG@k (graded gains, log2 discount), MRR@k, Recall@k.

``run``   {query id: document ids, best first}
``qrels`` {query id: {document id: relevance}}; relevance > 0 is relevant, and it is the gain for NDCG

Every query in ``qrels`` counts (a query the run has no results for scores 0); queries the run has but
``qrels`` lacks are ignored. A query with no relevant document is skipped, as trec_eval does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DEFAULT_KS = (1, 10, 100)


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    dcg = sum(relevance.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if relevance.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    relevant = {d for d, r in relevance.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def evaluate_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]],
                 ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean NDCG@10, MRR@10 and Recall@k for each k over the queries of ``qrels`` with a relevant document."""
    queries = [q for q, rel in qrels.items() if any(r > 0 for r in rel.values())]
    if not queries:
        raise ValueError("no query in qrels has a relevant document")
    out = {"ndcg@10": 0.0, "mrr@10": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    for q in queries:
        ranked, rel = list(run.get(q, ())), qrels[q]
        out["ndcg@10"] += ndcg_at_k(ranked, rel, 10)
        out["mrr@10"] += mrr_at_k(ranked, rel, 10)
        for k in ks:
            out[f"recall@{k}"] += recall_at_k(ranked, rel, k)
    return {name: value / len(queries) for name, value in out.items()} | {"queries": float(len(queries))}
