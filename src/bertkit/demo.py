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


UNSEEN_HEADLINES = (
    "Central bank raises interest rates to curb inflation",
    "Striker signs three-year deal with Premier League club",
    "Chancellor defends budget plans in Commons debate",
    "New smartphone chip promises longer battery life",
    "Oscar-winning actress to star in West End musical",
)


def finetune_demo(output_dir: str = "runs/bbc-news-demo", time_budget: str = "4m", model: str | None = None) -> dict:
    """Fine-tune the default model on BBC News topics within a time budget; print test results."""
    from bertkit.data.tasks import load_builtin
    from bertkit.train.finetune import finetune
    from bertkit.train.metrics import confusion_matrix

    print(f"Fine-tuning {model or 'all-MiniLM-L6-v2'} on bbc-news (5 topics), time budget {time_budget} "
          f"-> {output_dir}")
    result = finetune(output_dir, task="classification", dataset="bbc-news", model=model or "all-MiniLM-L6-v2",
                      epochs=2, lr=1e-4, batch_size=16, max_length=128, warmup_ratio=0.1, time_budget=time_budget,
                      seed=42, overwrite=True)
    st, test = result.state, result.test or {}
    print(f"\nstopped: {st.stopped} after {st.step} steps, {st.elapsed:.0f} s of training "
          f"({st.tokens / max(st.elapsed, 1e-9):,.0f} tokens/s); best dev step {st.best_step}")
    print(f"test accuracy {test.get('accuracy', float('nan')):.4f}, macro-F1 {test.get('macro_f1', float('nan')):.4f}")
    split = load_builtin("bbc-news", seed=42)["test"]
    pred = [p["label"] for p in result.model.predict(split.texts)]
    names = result.model.labels
    cm = confusion_matrix(split.labels, pred, labels=names)
    width = max(len(n) for n in names)
    print("\nconfusion matrix on the test split (rows = true topic, columns = predicted)")
    print(" " * (width + 2) + " ".join(f"{n[:5]:>5}" for n in names))
    for n, row in zip(names, cm, strict=True):
        print(f"{n:>{width}}  " + " ".join(f"{int(v):>5}" for v in row))
    print("\npredictions on unseen headlines")
    for h, p in zip(UNSEEN_HEADLINES, result.model.predict(list(UNSEEN_HEADLINES)), strict=True):
        print(f"  {p['label']:<13} {p['probabilities'][p['label']]:.2f}  {h}")
    return {"test": test, "steps": st.step, "seconds": st.elapsed}
