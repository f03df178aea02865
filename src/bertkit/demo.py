"""The main job (``make demo``): semantic search over BBC News with the embedded default model."""

from __future__ import annotations

import time

import numpy as np

from bertkit.data.corpora import load_bbc_news
from bertkit.encoder import load

DEFAULT_QUERIES = (
    "shares fall as oil prices climb",
    "new mobile phone technology",
    "party leaders clash over tax plans before the election",
    "striker scores twice in cup final",
    "film wins best picture at awards ceremony",
)


def search_demo(model: str | None = None, queries: tuple[str, ...] = DEFAULT_QUERIES, k: int = 3,
                limit: int | None = None, batch_size: int = 32) -> dict[str, float]:
    articles = load_bbc_news(dedupe=True)[:limit]
    enc = load(model)
    docs = [f"{a.title}. {a.body}" for a in articles]
    n_tokens = sum(min(n, enc.max_length) for n in enc.tokenizer.encode(docs, max_length=10**9).lengths)
    print(f"Embedding {len(docs)} BBC News articles with {enc.name} "
          f"({enc.model.config.num_hidden_layers} layers, path={enc.model.path}, max_length={enc.max_length})")
    t0 = time.perf_counter()
    doc_vecs = enc.embed(docs, batch_size=batch_size, progress=True)  # (n_docs, hidden), L2-normalized
    dt = time.perf_counter() - t0
    stats = {"docs": len(docs), "seconds": dt, "docs_per_s": len(docs) / dt, "tokens_per_s": n_tokens / dt}
    print(f"  {len(docs)} docs, {n_tokens:,} tokens in {dt:.1f} s: "
          f"{stats['docs_per_s']:.0f} docs/s, {stats['tokens_per_s']:,.0f} tokens/s\n")
    query_vecs = enc.embed(list(queries))
    scores = query_vecs @ doc_vecs.T  # cosine similarity: both sides are unit vectors
    for q, row in zip(queries, scores, strict=True):
        print(f"query: {q}")
        for rank, i in enumerate(np.argsort(-row)[:k], start=1):
            a = articles[i]
            print(f"  {rank}. [{row[i]:.3f}] ({a.topic}) {a.title}")
        print()
    return stats
