"""Passage indexes: one vector per window of each document, and searches that return each document once.

A long document's single vector (the length-weighted mean of its windows) blurs its topics together; a passage
index keeps every window (``Encoder.embed_windows``) as its own item, so a query matches the paragraph that answers
it. Items are named ``DOC_ID#k`` (the k-th window of the document) and carry the document's metadata plus
``document`` (its id), ``window`` (k), ``span`` (its token span) and ``text`` (the window's text, decoded).
The manifest's model entry records ``passages: "windows"``; a search fetches more windows than asked for and keeps
each document's best one (``best_per_document``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertkit.encoder import Encoder
from bertkit.errors import BertkitError
from bertkit.retrieval.index import VectorIndex
from bertkit.retrieval.index_model import model_info

PASSAGES = ("documents", "windows")
OVERFETCH = 4  # windows fetched per document asked for; a search widens it until it has k documents or all


def build_passage_index(encoder: Encoder, ids: Sequence[str], texts: Sequence[str],
                        metadata: Sequence[dict[str, Any] | None] | None = None, kind: str = "auto",
                        batch_size: int = 32, stride: int | None = None,
                        progress: bool | None = None) -> VectorIndex:
    """An index of every window of every document (``stride``: the windows' overlap, None: a quarter)."""
    if len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids but {len(texts)} texts")
    info = {**model_info(encoder, long_inputs="chunk", stride=stride), "passages": "windows"}
    if info.get("document_prompt"):
        raise BertkitError("a passage index does not take a document prompt yet")
    vectors, owner, spans = encoder.embed_windows(list(texts), stride, batch_size, normalize=True, progress=progress)
    content = encoder.tokenizer.encode_plain(encoder.sentence.prepare(list(texts)))  # what the windows cut
    meta = list(metadata) if metadata is not None else [None] * len(ids)
    item_ids, items, window = [], [], 0
    for w, (doc, (s, e)) in enumerate(zip(owner.tolist(), spans, strict=True)):
        window = window + 1 if w and owner[w - 1] == doc else 0
        item_ids.append(f"{ids[doc]}#{window}")
        items.append({**(meta[doc] or {}), "text": encoder.tokenizer.decode(content[doc][s:e]),
                      "document": ids[doc], "window": window, "span": [s, e]})
    index = VectorIndex(encoder.sentence.dim(None), info, kind)
    index.add(item_ids, vectors, items)
    return index


def is_passage_index(index: VectorIndex) -> bool:
    return bool(index.model and index.model.get("passages") == "windows")


def best_per_document(index: VectorIndex, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    """Per query, the ``k`` best documents, each once, by its best window:
    ``[{"id": document id, "score", "passage": window id, "span"}]`` best first."""
    fetch = min(len(index), k * OVERFETCH)
    while True:
        scores, found = index.search(queries, fetch)
        out = []
        for row_scores, row_ids in zip(scores, found, strict=True):
            seen: dict[str, dict[str, Any]] = {}
            for s, item in zip(row_scores.tolist(), row_ids, strict=True):
                meta = index.get(item)
                if meta["document"] not in seen:
                    seen[meta["document"]] = {"id": meta["document"], "score": float(s), "passage": item,
                                              "span": meta["span"]}
            out.append(list(seen.values())[:k])
        if fetch >= len(index) or all(len(hits) >= k for hits in out):
            return out
        fetch = min(len(index), fetch * 2)
