"""Exact nearest-neighbour search by inner product (cosine for unit vectors), in blocks of queries.

The exact baseline every approximate index is measured against, and the right choice for small collections.
"""

from __future__ import annotations

import numpy as np
import torch

from bertkit.encoder import Encoder
from bertkit.retrieval.data import RetrievalData
from bertkit.retrieval.metrics import DEFAULT_KS, evaluate_run


def exact_search(queries: np.ndarray, docs: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """queries (n_q, dim), docs (n_d, dim) float32 -> (scores, indices), each (n_q, min(k, n_d)), best first."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dimension {queries.shape[1]} differs from document dimension {docs.shape[1]}")
    k = min(k, len(docs))
    d = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32))
    scores, idx = [], []
    for s in range(0, len(queries), block):  # (block, n_d) scores at a time: bounded memory
        q = torch.from_numpy(np.ascontiguousarray(queries[s:s + block], dtype=np.float32))
        top = torch.topk(q @ d.T, k, dim=1)
        scores.append(top.values.numpy())
        idx.append(top.indices.numpy())
    return np.concatenate(scores), np.concatenate(idx)


def evaluate_retrieval(encoder: Encoder, data: RetrievalData, ks: tuple[int, ...] = DEFAULT_KS,
                       batch_size: int = 32) -> dict[str, float]:
    """Embed documents and queries, rank all documents for each query exactly, score against the qrels."""
    doc_ids, q_ids = list(data.docs), list(data.queries)
    doc_vecs = encoder.embed([data.docs[d] for d in doc_ids], batch_size=batch_size)
    q_vecs = encoder.embed([data.queries[q] for q in q_ids], batch_size=batch_size)
    _, idx = exact_search(q_vecs, doc_vecs, max(max(ks), 10))
    run = {q: [doc_ids[j] for j in row] for q, row in zip(q_ids, idx, strict=True)}
    return evaluate_run(run, data.qrels, ks)
