"""Exact nearest-neighbour search by inner product (cosine for unit vectors), in blocks of queries; first-stage
runs of a bi-encoder over RetrievalData, their evaluation, and hard-negative mining from them.

The exact baseline every approximate index is measured against, and the right choice for small collections.

Queries and documents are embedded with the model's own settings and its prompts for each side (the "query"
prompt; the "document", "passage" or "corpus" one), unless given: ``query_prompt`` / ``doc_prompt`` are
literal texts ("" for none), ``pooling`` overrides the model's pooling. Vectors are L2-normalized unless the
model was trained for dot products (similarity_fn_name "dot").
"""

from __future__ import annotations

from collections.abc import Sequence

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
        with torch.autocast("cpu", enabled=False):  # exact means fp32, also when called inside a bf16 region
            top = torch.topk(q @ d.T, k, dim=1)
        scores.append(top.values.numpy())
        idx.append(top.indices.numpy())
    return np.concatenate(scores), np.concatenate(idx)


def evaluate_retrieval(encoder: Encoder, data: RetrievalData, ks: tuple[int, ...] = DEFAULT_KS,
                       batch_size: int = 32, *, query_prompt: str | None = None, doc_prompt: str | None = None,
                       pooling: str | Sequence[str] | None = None) -> dict[str, float]:
    """Embed documents and queries, rank all documents for each query exactly, score against the qrels."""
    run = retrieve(encoder, data, max(max(ks), 10), batch_size=batch_size, query_prompt=query_prompt,
                   doc_prompt=doc_prompt, pooling=pooling)
    return evaluate_run(run, data.qrels, ks)


def embed_side(encoder: Encoder, texts: list[str], role: str, prompt: str | None = None,
               pooling: str | Sequence[str] | None = None, batch_size: int | None = 64,
               progress: bool | None = None) -> np.ndarray:
    """Embed one side of retrieval ("query" or "document") as search needs it: the side's prompt (given, else
    the model's own for the role), normalized unless the model scores by dot product."""
    s = encoder.sentence
    return encoder.embed(texts, batch_size=batch_size, pooling=pooling, normalize=s.similarity != "dot",
                         progress=progress, prompt=s.role_prompt(role, prompt=prompt))


def retrieve_scored(encoder: Encoder, data: RetrievalData, k: int, doc_vectors: np.ndarray | None = None,
                    batch_size: int = 64, *, query_prompt: str | None = None, doc_prompt: str | None = None,
                    pooling: str | Sequence[str] | None = None) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    """The bi-encoder's top k document ids of every query, best first (exact search), and their scores.

    ``doc_vectors`` (n_docs, dim), in ``data.docs`` order, spares re-embedding the collection across splits.
    """
    doc_ids = list(data.docs)
    if doc_vectors is None:
        doc_vectors = embed_side(encoder, [data.docs[d] for d in doc_ids], "document", doc_prompt, pooling, batch_size)
    q_ids = list(data.queries)
    q_vecs = embed_side(encoder, [data.queries[q] for q in q_ids], "query", query_prompt, pooling, batch_size)
    scores, idx = exact_search(q_vecs, doc_vectors, k)
    return ({q: [doc_ids[j] for j in row] for q, row in zip(q_ids, idx, strict=True)},
            {q: row.tolist() for q, row in zip(q_ids, scores, strict=True)})


def retrieve(encoder: Encoder, data: RetrievalData, k: int, doc_vectors: np.ndarray | None = None,
             batch_size: int = 64, **embedding: str | Sequence[str] | None) -> dict[str, list[str]]:
    """The bi-encoder's top k document ids of every query, best first (``embedding``: as retrieve_scored's)."""
    return retrieve_scored(encoder, data, k, doc_vectors, batch_size, **embedding)[0]


def mine_hard_negatives(encoder: Encoder, data: RetrievalData, n: int, top: int = 50, seed: int = 42,
                        sample: bool = False, doc_vectors: np.ndarray | None = None) -> dict[str, list[str]]:
    """For each judged query, n documents the retriever ranks in its top ``top`` that are not relevant.

    Default: the n highest ranked (the hardest, and the ones re-ranking sees at test time). ``sample``: n drawn
    uniformly (seeded per query) from the top ``top`` non-relevant ones instead. A query with fewer than n
    candidates gets what there is.
    """
    if n < 1 or top < n:
        raise ValueError(f"need 1 <= n <= top, got n={n}, top={top}")
    depth = top + max((len(r) for r in data.qrels.values()), default=0)  # room for the relevant ones skipped
    run = retrieve(encoder, data, depth, doc_vectors)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for q in sorted(data.qrels):
        relevant = {d for d, r in data.qrels[q].items() if r > 0}
        pool = [d for d in run[q] if d not in relevant][:top]
        out[q] = [pool[i] for i in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))] if sample \
            else pool[:n]
    return out
