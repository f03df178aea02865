"""The main job (``make demo``): semantic search over BBC News with the embedded default model (a saved vector
index, re-ranked by a cross-encoder where one has been trained), then fine-tuning a topic classifier."""

from __future__ import annotations

import time
from pathlib import Path

from bertkit.encoder import Encoder
from bertkit.errors import BertkitError
from bertkit.loader import load
from bertkit.retrieval.index import VectorIndex

DEFAULT_QUERIES = (
    "shares fall as oil prices climb",
    "new mobile phone technology",
    "party leaders clash over tax plans before the election",
    "striker scores twice in cup final",
    "film wins best picture at awards ceremony",
)


def search_demo(model: str | None = None, queries: tuple[str, ...] = DEFAULT_QUERIES, k: int = 3,
                limit: int | None = None, batch_size: int = 32, index_dir: str | Path = "runs/demo-index",
                reranker: str | Path | None = "runs/bbc-reranker", rerank_top: int = 20) -> dict[str, float]:
    """Index BBC News (or reuse the index built before with the same model and articles) and search it;
    where a cross-encoder has been trained (``bertkit train-reranker``), re-rank the top ``rerank_top``."""
    from bertkit.retrieval.data import bbc_documents

    ids, texts, metadata = (x[:limit] for x in bbc_documents())
    enc = load(model)
    stats: dict[str, float] = {"docs": len(texts)}
    index = _reusable_index(index_dir, enc, ids)
    if index is None:
        n_tokens = sum(min(n, enc.max_length) for n in enc.tokenizer.encode(texts, max_length=10**9).lengths)
        print(f"Indexing {len(texts)} BBC News articles with {enc.name} "
              f"({enc.model.config.num_hidden_layers} layers, path={enc.model.path}, max_length={enc.max_length})")
        t0 = time.perf_counter()
        index = VectorIndex.build(enc, ids, texts, metadata, batch_size=batch_size, progress=True)
        dt = time.perf_counter() - t0
        index.save(index_dir)
        stats.update(seconds=dt, docs_per_s=len(texts) / dt, tokens_per_s=n_tokens / dt)
        print(f"  {len(texts)} docs, {n_tokens:,} tokens embedded in {dt:.1f} s: {stats['docs_per_s']:.0f} docs/s, "
              f"{stats['tokens_per_s']:,.0f} tokens/s; {index.active_kind} index saved to {index_dir}\n")
    else:
        print(f"Searching the index in {index_dir} ({len(index)} BBC News articles, {enc.name}, built before)\n")
    rr = None
    if reranker is not None and (Path(reranker) / "config.json").is_file():
        from bertkit.retrieval.reranker import Reranker

        rr = Reranker.from_pretrained(reranker)
        how = f"logit + {rr.fusion_weight:g} x cosine" if rr.fusion_weight is not None else "its logit"
        print(f"Re-ranking the top {rerank_top} with the cross-encoder in {reranker} ({how})\n")
    scores, found = index.search_text(enc, list(queries), max(k, rerank_top) if rr else k)
    for q, row_ids, row_scores in zip(queries, found, scores, strict=True):
        hits = list(zip(row_ids, row_scores.tolist(), strict=True))
        if rr is not None:
            fuse = [s for _, s in hits] if rr.fusion_weight is not None else None  # logit + w x cosine
            hits = [(hits[j][0], s) for j, s in rr.rank(q, [index.document(i) for i, _ in hits], top_k=k,
                                                        first_stage_scores=fuse)]
        print(f"query: {q}")
        for rank, (ident, score) in enumerate(hits[:k], start=1):
            m = index.get(ident)
            print(f"  {rank}. [{score:.3f}] ({m['topic']}) {m['title']}")
        print()
    return stats


def _reusable_index(index_dir: str | Path, enc: Encoder, ids: list[str]) -> VectorIndex | None:
    """The index saved in ``index_dir`` when it holds exactly these articles embedded by this model, else None."""
    if not (Path(index_dir) / "index.json").is_file():
        return None
    try:
        index = VectorIndex.load(index_dir)
        index.check_encoder(enc)
    except BertkitError as e:
        print(f"(rebuilding the index in {index_dir}: {e})")
        return None
    return index if index.ids == ids and index.model.get("max_length") == enc.max_length else None


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
    from bertkit.metrics import confusion_matrix
    from bertkit.train.finetune import finetune

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
