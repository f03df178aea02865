"""A saved vector index: unit-norm embeddings, their string ids and a JSON metadata object per item.

Kinds (``KINDS``; settings, measurements and why: ``retrieval/index_kinds.py``):

    exact   exact search (``exact_search``): every vector scored; the right choice for small collections
    hnsw    an HNSW graph (faiss ``IndexHNSWFlat``, inner product, M 16, ef_search 64; recall@10 0.98 at 100k)
    ivfpq   IVF lists of PQ codes (1/16 of float32), the top k x 10 re-ranked exactly: for collections that
            outgrow memory (at 1M 384-d vectors, ``benchmarks/index_scale.py``)
    ivfsq   IVF lists of 8-bit scalar codes (1/4 of float32), re-ranked the same way
    auto    exact below ``EXACT_MAX`` vectors (~3 ms a query at 384 dims), hnsw from there; never a lossy kind

faiss was chosen by measurement (``benchmarks/index_bench.py``, 100k clustered 384-d vectors, 2 threads): at
ef_search 64 both faiss and usearch reach recall@10 0.98 against exact search, and faiss built faster (29 s vs
40 s), searched batches faster (6,400 vs 3,700 queries/s) and answered one query in half the time (0.16 vs 0.30 ms).

Slots. Vectors, ids and metadata are kept per slot (a row of vectors-<gen>.npy). ``remove`` marks an item's slot
deleted (a tombstone); ``upsert`` / ``update`` mark the old slot deleted and append the new version. Searches
skip deleted slots (faiss: a selector of the live slots; exact: dropped from an over-fetched top k), so a deleted
id never comes back. Deleted slots stay until a save compacts: it rewrites vectors and items without them and
rebuilds the faiss structure (an HNSW graph cannot remove a node; IVF lists are refilled with the trained
quantizer), when ``COMPACT_AT`` (a fifth) or more of the slots are deleted, or when asked (``save(compact=True)``,
``bertkit index compact``). Until then deleted-<gen>.npy lists them.

On disk, a directory::

    index.json               the manifest: format 2, model, dim, count (items), slots, kind, library and search
                             settings, files with sizes and sha256
    vectors-<gen>.npy        (slots, dim) float32, the source of truth (exact search, re-ranking, rebuilding)
    items-<gen>.arrow        each slot's id and metadata; ids-<gen>.npy: the slots sorted by id (index_store.py)
    deleted-<gen>.npy        the deleted slots (int64), while there are any
    hnsw-<gen>.faiss         the graph (kind hnsw), or ivf-<gen>.faiss: the lists (ivfpq, ivfsq)

Format 1 (before deletes) had items-<gen>.jsonl, one {"id": ..., "metadata": {...}} a line, and no ids or deleted
file: it loads as before (its items read into memory) and is written in format 2 by its next save.

Loading memory-maps (``mmap=True``, the default) the vectors, the items and the IVF lists: a loaded index holds
little in the process's own memory but for an HNSW graph (faiss keeps it, a float copy of every vector included,
in memory); the OS pages in what searches read (exact: every vector; IVF: the lists probed and the candidates).

The manifest records how the vectors were made (the model, its pooling, the documents' prompt, and the prompt
queries get), so appends and searches embed the same way, whatever the model's defaults later are.

A save writes a new generation of the files that changed (each temp + fsync + rename); files unchanged since the
index was loaded from (or last saved to) that directory are named again, not copied (deleting 10 items of a 1M
index writes a small deleted-<gen>.npy, not 1.5 GB of vectors). Then it writes the manifest, which names them;
only then are files no manifest names removed. A save that fails or is killed leaves the previous manifest and
its files in place, so a directory always loads as the old index or the new one, never a mix.

One writer at a time: every save holds ``index_lock(directory)`` (``retrieval/index_lock.py``, re-entrant in its
thread), and a change holds it from loading to saving: ``with VectorIndex.edit(directory) as index: ...``, as
the CLI's build, upsert, delete and compact do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.encoder import Encoder
from bertkit.errors import BertkitError, InputFileError
from bertkit.retrieval import index_kinds, index_model
from bertkit.retrieval.index_kinds import (
    ANN_KINDS,
    HNSW_EF_SEARCH,
    IVF_KINDS,
    KINDS,  # noqa: F401  (importable from here too)
    NPROBE,
    REFINE,
    check_kind,
)
from bertkit.retrieval.index_lock import IndexLocked, index_lock  # noqa: F401  (importable from here too)
from bertkit.retrieval.index_manifest import (
    EXT,
    FORMAT,
    FORMAT_VERSION,
    ann_role,
    check_files,
    named_files,
    read_deleted,
    read_manifest,
    remove_unnamed,
)
from bertkit.retrieval.index_model import model_info
from bertkit.retrieval.index_parts import iter_items, open_parts, parts_model
from bertkit.retrieval.index_store import (
    ItemsWriter,
    NpyWriter,
    SavedItems,
    Slots,
    check_items,
    check_vectors,
    file_entry,
    items_batch,
    npy_chunks,
    read_jsonl_items,
    read_vectors,
    write_id_order,
)
from bertkit.retrieval.search import exact_search
from bertkit.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("bertkit")

EXACT_MAX = 20_000  # auto: exact search below this many vectors (~3 ms a query at 384 dims), HNSW from here
COMPACT_AT = 0.2  # a save compacts when this fraction of the slots is deleted
EXACT_BLOCK = 131_072  # exact search scores the vectors this many at a time: bounded score matrices


def _some(ids: Sequence[str], n: int = 5) -> str:
    more = f" (and {len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(map(repr, ids[:n])) + more


class VectorIndex:
    """Slots of unit vectors with ids and metadata; exact, HNSW or IVF search by inner product (= cosine).

    Search settings (attributes, recorded by a save): ``ef_search`` (hnsw), ``nprobe`` (IVF lists searched) and
    ``refine`` (IVF: the top k x refine by code are re-ranked exactly; 1: not)."""

    def __init__(self, dim: int, model: dict[str, Any] | None = None, kind: str = "auto",
                 ef_search: int = HNSW_EF_SEARCH, nprobe: int = NPROBE, refine: int = REFINE) -> None:
        self.dim, self.model, self.kind = dim, model, check_kind(kind)
        self.ef_search, self.nprobe, self.refine = ef_search, nprobe, refine
        self._store = Slots(dim)
        self._ann: Any = None  # the faiss structure over slots [0, ntotal) of kind _ann_kind, built when needed
        self._ann_kind: str | None = None
        self._ann_path: Path | None = None  # the file a memory-mapped structure reads
        self._selector: Any = None  # (IDSelectorBitmap of the live slots, its bitmap), until a slot changes
        self._home: Path | None = None  # the directory of the files in _files
        self._files: dict[str, dict[str, Any]] = {}  # role -> manifest entry, of files unchanged since load/save
        self._mmap = True
        self._saving: tuple[Path, dict[str, str], bool] | None = None
        self._pending_ann: Any = None
        self._announced = ""
        self._said_untrained = False
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def __len__(self) -> int:
        return self._store.count

    def __contains__(self, ident: object) -> bool:
        return isinstance(ident, str) and self._store.find([ident])[0] >= 0

    @property
    def deleted(self) -> int:
        """Slots deleted (or replaced) and not yet compacted away."""
        return self._store.n_dead

    @property
    def ids(self) -> list[str]:
        """Every item's id, in slot order (a new list: built from the store on each call)."""
        return self._store.ids(self._store.live())

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Every item's metadata, in slot order; change an item's with ``update``."""
        return [self._store.metadata(int(s)) for s in self._store.live()]

    @property
    def vectors(self) -> np.ndarray:
        """(count, dim) float32: every item's vector, in slot order."""
        return self._store.live_vectors()

    def get(self, ident: str) -> dict[str, Any]:
        """The metadata of one id."""
        slot = self._store.find([ident])[0] if isinstance(ident, str) else -1
        if slot < 0:
            raise KeyError(f"no item with id {ident!r} in the index")
        return self._store.metadata(int(slot))

    def document(self, ident: str) -> str:
        """The text a reranker reads for one id: "title. text", as it was embedded."""
        meta = self.get(ident)
        if not isinstance(meta.get("text"), str):
            raise BertkitError(f"item {ident!r} of the index stores no text; re-ranking needs the documents' texts")
        title = meta.get("title")
        return f"{title.strip()}. {meta['text']}" if isinstance(title, str) and title.strip() else meta["text"]

    @property
    def active_kind(self) -> str:
        """The search that runs: ``kind``, with "auto" resolved by the collection's size, and an IVF kind exact
        until it has trained (``IVF_MIN_COUNT`` vectors)."""
        if self.kind == "auto":
            return "hnsw" if len(self) >= EXACT_MAX else "exact"
        if self.kind in IVF_KINDS and self._ann_kind != self.kind and len(self) < index_kinds.IVF_MIN_COUNT:
            return "exact"
        return self.kind

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, encoder: Encoder, ids: Sequence[str], texts: Sequence[str],
              metadata: Sequence[dict[str, Any] | None] | None = None, kind: str = "auto",
              batch_size: int = 32, progress: bool | None = None, *, pooling: str | Sequence[str] | None = None,
              doc_prompt: str | None = None, query_prompt: str | None = None, long_inputs: str = "truncate",
              stride: int | None = None) -> VectorIndex:
        """Embed ``texts`` and index them under ``ids``; each item's metadata gets ``text`` unless it has one.

        pooling: instead of the model's own. doc_prompt / query_prompt: the literal prompts documents get now
        and queries get at search time (None: the model's own "document" / "query" prompts; "" for none).
        long_inputs "chunk": a document past max_length is the length-weighted mean of its windows (overlapping
        by ``stride`` tokens), recorded so that appends embed the same way.
        """
        info = model_info(encoder, pooling, doc_prompt, query_prompt, long_inputs, stride)
        index = cls(encoder.sentence.dim(info["pooling"]), info, kind)
        index.add_texts(encoder, ids, texts, metadata, batch_size=batch_size, progress=progress)
        return index

    @classmethod
    def from_parts(cls, parts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   directory: str | os.PathLike[str], kind: str = "auto", *, query_prompt: str | None = None,
                   lock_timeout: float | None = 600.0,
                   on_wait: Callable[[str], None] | None = None) -> VectorIndex:
        """Build and save an index in ``directory`` (replacing one there) from embedding parts (one directory
        or several shards'), without holding their vectors in memory: they stream, a part at a time, into the
        new vectors-<gen>.npy, an IVF kind trains on a sample of it and adds it a chunk at a time. Ids and
        metadata: ``retrieval/index_parts.py``. ``query_prompt``: recorded for searches (None: the model's own)."""
        source = open_parts([parts] if isinstance(parts, (str, os.PathLike)) else list(parts))
        index = cls(source.dim, parts_model(source.settings, query_prompt), check_kind(kind))
        d = Path(directory)
        with index_lock(d, lock_timeout, on_wait):
            d.mkdir(parents=True, exist_ok=True)
            gen = secrets.token_hex(4)
            names = {"vectors": f"vectors-{gen}.npy", "items": f"items-{gen}.arrow"}
            try:
                with atomic_path(d / names["vectors"]) as vtmp, atomic_path(d / names["items"]) as itmp, \
                        NpyWriter(vtmp, source.count, source.dim) as vectors, ItemsWriter(itmp) as items:
                    for ids, part, metadata in iter_items(source):
                        vectors.write(part)
                        items.write(items_batch(ids, metadata))
                index._store.read(np.load(d / names["vectors"], mmap_mode="r"),
                                  SavedItems(d / names["items"], None, source.count))
                index._home = d.resolve()
                index._files = {role: file_entry(d, name) for role, name in names.items()}
                index.save(d, compact=False)  # the id order, the structure (from the memory map), the manifest
            except BaseException:
                named = named_files(d)
                for name in names.values():  # what no manifest names: a failed build leaves the old index as it was
                    if name not in named:
                        (d / name).unlink(missing_ok=True)
                raise
        return cls.load(d, verify=False)  # its files were just written and hashed

    def add_parts(self, parts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                  upsert: bool = False) -> tuple[int, int]:
        """Add (or with ``upsert``, add or replace) the items of embedding parts, a part at a time; they must
        come from the index's model, pooling and document prompt. Returns (added, replaced). The new vectors
        are held in memory until the next save."""
        source = open_parts([parts] if isinstance(parts, (str, os.PathLike)) else list(parts))
        theirs = parts_model(source.settings)
        if source.dim != self.dim:
            raise BertkitError(f"{source.directories[0]} holds {source.dim}-dimensional vectors, the index {self.dim}")
        if self.model is not None:
            index_model.check_same_model(self.model, theirs, source.directories[0])
        elif not len(self):
            self.model = theirs
        added = replaced = 0
        for ids, vectors, metadata in iter_items(source):
            if upsert:
                a, r = self.upsert(ids, vectors, metadata)
                added, replaced = added + a, replaced + r
            else:
                self.add(ids, vectors, metadata)
                added += len(ids)
        return added, replaced

    def add_texts(self, encoder: Encoder, ids: Sequence[str], texts: Sequence[str],
                  metadata: Sequence[dict[str, Any] | None] | None = None, batch_size: int = 32,
                  progress: bool | None = None, *, upsert: bool = False) -> tuple[int, int]:
        """Embed ``texts`` and add them under ``ids`` (new ids only; with ``upsert``, existing ids are replaced).
        Returns (added, replaced)."""
        if self.model is None and not len(self):
            self.model = model_info(encoder)
        if self.model.get("passages") == "windows":  # its items are windows (retrieval/passages.py)
            raise BertkitError("this index holds passages (a vector per window of each document): documents "
                               "cannot be added one vector each; rebuild it with the new documents")
        self.check_encoder(encoder)
        if isinstance(texts, str) or len(texts) != len(ids):
            raise ValueError(f"got {len(ids)} ids but {'a string' if isinstance(texts, str) else len(texts)} texts")
        metadata = self._check_items(ids, metadata, new=not upsert)  # before the expensive part
        items = [{"text": t, **m} for t, m in zip(texts, metadata, strict=True)]
        vectors = index_model.embed(self.model, encoder, list(texts), "document", batch_size, progress)
        if upsert:
            return self.upsert(ids, vectors, items)
        self.add(ids, vectors, items)
        return len(ids), 0

    # ---- changing ------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> None:
        """Append items: ``vectors`` (n, dim) unit-norm float32, ``ids`` new and unique, one metadata dict each."""
        metadata = self._check_items(ids, metadata, new=True)
        self._append(ids, check_vectors(ids, vectors, self.dim), metadata)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadata: Sequence[dict[str, Any] | None] | None = None) -> tuple[int, int]:
        """Add the new ``ids`` and replace the vector and metadata of those already in the index (their old
        versions are never found again). Returns (added, replaced)."""
        metadata = self._check_items(ids, metadata, new=False)
        vectors = check_vectors(ids, vectors, self.dim)
        old = self._store.find(ids)
        self._delete(old[old >= 0])
        self._append(ids, vectors, metadata)
        replaced = int((old >= 0).sum())
        return len(ids) - replaced, replaced

    def update(self, ids: Sequence[str], vectors: np.ndarray | None = None,
               metadata: Sequence[dict[str, Any] | None] | None = None) -> None:
        """Replace the vectors and/or the metadata of items already in the index (None: keep theirs)."""
        check_items(ids, None)
        slots = self._store.find(ids)
        missing = [i for i, s in zip(ids, slots, strict=True) if s < 0]
        if missing:
            raise BertkitError(f"{len(missing)} id(s) to update are not in the index: {_some(missing)}; nothing "
                               "was changed (upsert adds new ids)")
        if vectors is None:
            vectors = self._store.vectors(slots)
        if metadata is None:
            metadata = [self._store.metadata(int(s)) for s in slots]
        self.upsert(ids, vectors, metadata)

    def remove(self, ids: Sequence[str], missing: str = "error") -> int:
        """Delete items by id; returns how many were deleted. Ids not in the index are an error naming them
        (nothing is deleted), or with ``missing="ignore"`` skipped."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, not one string")
        if missing not in ("error", "ignore"):
            raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
        ids = list(dict.fromkeys(ids))
        slots = self._store.find(ids)
        absent = [i for i, s in zip(ids, slots, strict=True) if s < 0]
        if absent and missing == "error":
            raise BertkitError(f"{len(absent)} of the {len(ids)} id(s) to delete are not in the index: "
                               f"{_some(absent)}; nothing was deleted")
        self._delete(slots[slots >= 0])
        return int((slots >= 0).sum())

    def _delete(self, slots: np.ndarray) -> None:
        if len(slots):
            self._store.delete(slots)
            self._files.pop("deleted", None)
            self._selector = None

    def _append(self, ids: Sequence[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> None:
        self._store.append(ids, vectors, metadata)
        for role in ("vectors", "items", "ids"):
            self._files.pop(role, None)
        self._selector = None
        self._sync_ann()

    def _check_items(self, ids: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None,
                     new: bool) -> list[dict[str, Any]]:
        """``check_items``, and with ``new`` refuse ids already in the index."""
        out = check_items(ids, metadata)
        if new and len(self._store):
            existing = [i for i, s in zip(ids, self._store.find(ids), strict=True) if s >= 0]
            if existing:
                raise BertkitError(f"{len(existing)} id(s) already in the index: {_some(existing)}")
        return out

    # ---- the faiss structure ---------------------------------------------------------------
    def _sync_ann(self) -> None:
        """Build the structure the kind asks for (training an IVF one), or add the slots it lacks; drop it
        when the kind needs none."""
        kind = self.active_kind
        if kind == "exact":
            self._ann = self._ann_kind = None
            if self.kind in IVF_KINDS and not self._said_untrained and len(self):
                log.info("kind %s needs %d vectors to train its quantizers; searching the %d there are exactly "
                         "until then", self.kind, index_kinds.IVF_MIN_COUNT, len(self))
                self._said_untrained = True
            return
        if self._ann_kind != kind:
            self._ann = None
        store = self._store
        if self._ann is None:
            if kind == "hnsw":
                log.info("building an HNSW graph over %d vectors (faiss %s)", len(store),
                         index_kinds.faiss_module().__version__)
                if len(store) * self.dim * 4 > 1 << 30:
                    log.warning("an HNSW graph keeps a float copy of every vector in memory (%.1f GB here); kind "
                                "ivfpq keeps them on disk", len(store) * self.dim * 4 / 2**30)
                self._ann = index_kinds.new_hnsw(self.dim)
            else:
                self._ann = index_kinds.train_ivf(kind, self.dim, len(store), store.vectors)
            self._ann_kind, self._ann_path = kind, None
            self._files.pop(ann_role(kind), None)
        if self._ann.ntotal < len(store):  # faiss numbers what it is given 0..ntotal-1 in add order: our slots
            self._ann = index_kinds.writable(self._ann, self._ann_path)
            if kind == "hnsw":  # in one call: a graph built in chunks is worse (index_kinds.py), and holds them all
                self._ann.add(np.ascontiguousarray(store.span(int(self._ann.ntotal))))
            else:  # IVF codes each vector alone: chunks read from disk keep the build's memory flat
                for _, block in store.chunks(index_kinds.ADD_CHUNK, int(self._ann.ntotal)):
                    self._ann.add(np.ascontiguousarray(block))
            self._files.pop(ann_role(kind), None)

    def set_kind(self, kind: str) -> None:
        self.kind = check_kind(kind)
        self._sync_ann()

    # ---- searching -------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """queries (n, dim) -> (scores (n, min(k, count)) best first, ids per query)."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {np.shape(queries)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not len(self):
            raise BertkitError("the index is empty")
        k = min(k, len(self))
        if not len(q):
            return np.zeros((0, k), np.float32), []
        self._sync_ann()
        kind = self.active_kind
        if self._announced != kind:  # say which search runs, once per index and kind
            how = {"exact": "exact_search", "hnsw": f"faiss HNSW, ef_search={max(self.ef_search, k)}"}.get(
                kind, f"faiss {kind}, nprobe={self.nprobe}, refine={self.refine}")
            log.info("searching %d vectors: %s (%s)", len(self), kind, how)
            self._announced = kind
        if kind == "exact":
            scores, slots = self._exact(q, k)
        else:
            if self._store.n_dead and self._selector is None:
                self._selector = index_kinds.live_selector(self._store.dead)
            fetch = k * self.refine if kind in IVF_KINDS and self.refine > 1 else k
            selector = self._selector[0] if self._store.n_dead else None
            scores, slots = index_kinds.search_ann(kind, self._ann, q, fetch, selector, self.ef_search, self.nprobe)
            if fetch > k:
                scores, slots = self._rerank(q, slots, k)
            short = np.flatnonzero((slots < 0).any(axis=1))
            if len(short):  # the structure found fewer than k (tiny or odd collections): answer those exactly
                scores[short], slots[short] = self._exact(q[short], k)
        return scores, [self._store.ids(row) for row in slots]

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, slots) (n, k) of the live slots by exact inner product, a block of vectors at a time."""
        store = self._store
        blocks = store.blocks(EXACT_BLOCK)
        with warnings.catch_warnings():  # torch warns that a read-only memory map is not writable: it only reads
            warnings.simplefilter("ignore", UserWarning)
            if len(blocks) == 1 and not store.n_dead:
                return exact_search(q, blocks[0][1], k)
            found = []
            for start, docs in blocks:  # each block's top k + (deleted ones) holds its k best live ones
                s, i = exact_search(q, docs, min(k + store.n_dead, len(docs)),
                                    block=max(1, min(1024, (1 << 24) // len(docs))))
                i = i + start
                s[store.dead[i]] = -np.inf
                found.append((s, i))
        scores, slots = np.concatenate([f[0] for f in found], 1), np.concatenate([f[1] for f in found], 1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(slots, best, 1)

    def _rerank(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best k of ``candidates`` (n, c) slots (-1: none) by exact inner product with their float vectors."""
        valid = candidates >= 0
        unique = np.unique(candidates[valid])
        vectors = self._store.vectors(unique)  # sorted, unique: each candidate row read once (Slots.vectors)
        scores = np.full(candidates.shape, -np.inf, np.float32)
        for i in range(len(q)):
            rows = np.searchsorted(unique, candidates[i, valid[i]])
            scores[i, valid[i]] = vectors[rows] @ q[i]
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        slots = np.take_along_axis(candidates, best, 1)
        slots[~np.isfinite(np.take_along_axis(scores, best, 1))] = -1
        return np.take_along_axis(scores, best, 1), slots

    def search_text(self, encoder: Encoder, queries: Sequence[str], k: int = 10, batch_size: int = 32,
                    prompt: str | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Embed ``queries`` with ``encoder`` (checked against the index's model), with the query prompt the
        index records (or ``prompt``, a literal text), and search."""
        if isinstance(queries, str):
            raise TypeError("search_text() takes a list of queries; wrap a single query in a list")
        if not len(queries):
            raise ValueError("no queries given")
        for i, query in enumerate(queries):
            if not isinstance(query, str):
                raise TypeError(f"query {i + 1} is a {type(query).__name__}, expected a string")
            if not query.strip():
                raise BertkitError(f"query {i + 1} is empty; give some text to search for")
        self.check_encoder(encoder)
        return self.search(index_model.embed(self.model, encoder, list(queries), "query", batch_size, False, prompt), k)

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder other than the one the vectors were made with: its scores would be meaningless."""
        index_model.check_encoder(self.model, self.dim, encoder)

    def load_encoder(self, model: str | None = None) -> Encoder:
        """The index's own model (or ``model``, which must be the same one), truncating as at build time."""
        return index_model.load_encoder(self.model, self.dim, model)

    # ---- saving and loading ----------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def edit(cls, directory: str | os.PathLike[str], lock_timeout: float | None = 600.0,
             on_wait: Callable[[str], None] | None = None, compact: bool | None = None) -> Iterator[VectorIndex]:
        """Load the index in ``directory`` holding its writer lock, and save it when the block ends without an
        error: ``with VectorIndex.edit(d) as index: index.remove(["a"])``. A second writer waits for the first."""
        read_manifest(directory)  # no index there: the error, before the lock would make the directory
        with index_lock(directory, lock_timeout, on_wait):
            index = cls.load(directory)
            yield index
            index.save(directory, compact=compact)

    def save(self, directory: str | os.PathLike[str], compact: bool | None = None) -> Path:
        """Write the index to ``directory`` atomically, holding its lock (see the module docstring); returns
        the manifest's path. ``compact``: drop deleted slots (None: when ``COMPACT_AT`` of them are deleted)."""
        d = Path(directory)
        with index_lock(d):
            return self._save(d, compact)

    def _save(self, d: Path, compact: bool | None) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        self._sync_ann()
        store = self._store
        compact = bool(store.n_dead and (compact or (compact is None and store.n_dead >= COMPACT_AT * len(store))))
        kept = {} if compact or self._home != d.resolve() else {
            role: e for role, e in self._files.items()
            if (d / e["name"]).is_file() and (d / e["name"]).stat().st_size == e["bytes"]}
        roles = ["vectors", "items", "ids"] + (["deleted"] if store.n_dead and not compact else [])
        roles += [r for r in [ann_role(self.active_kind)] if r]
        gen = secrets.token_hex(4)
        names = {r: kept[r]["name"] if r in kept else f"{r}-{gen}.{EXT[r]}" for r in roles}
        files: dict[str, dict[str, Any]] = {}
        written: list[str] = []
        self._saving, self._pending_ann = (d, names, compact), None
        try:
            for role in roles:
                if role in kept:
                    files[role] = kept[role]
                    continue
                with atomic_path(d / names[role]) as tmp:
                    self._write(role, tmp)
                written.append(names[role])
                files[role] = file_entry(d, names[role])
            atomic_write_text(d / "index.json", json.dumps(self._manifest(files, compact), indent=2) + "\n")
        except BaseException:
            for name in written:  # this generation's finished files: the old manifest never names them
                (d / name).unlink(missing_ok=True)
            raise
        finally:
            self._saving = None
        remove_unnamed(d, set(names.values()))  # the previous generation, and leftovers of saves that were killed
        if names["vectors"] in written:  # the index now reads what it wrote: what it added no longer in memory
            live = store.live() if compact else np.arange(len(store))
            slots = len(live)
            store.read(read_vectors(d / names["vectors"], slots, self.dim, self._mmap),
                       SavedItems(d / names["items"], d / names["ids"], slots, self._mmap),
                       None if compact else store.dead)
            if compact:
                self._ann, self._ann_path, self._selector = self._pending_ann, None, None
        self._home, self._files, self._pending_ann = d.resolve(), files, None
        log.info("saved %d vectors (%s%s) to %s", len(self), self.active_kind,
                 f", {store.n_dead} deleted" if store.n_dead else "", d)
        return d / "index.json"

    def _write(self, role: str, path: Path) -> None:
        assert self._saving is not None
        d, names, compact = self._saving
        store = self._store
        keep = ~store.dead if compact else np.ones(len(store), bool)
        if role == "vectors":
            store.write_vectors(path, keep)
        elif role == "items":
            store.write_items(path, keep)
        elif role == "ids":
            write_id_order(d / names["items"], path, np.ones(int(keep.sum()), bool) if compact else ~store.dead)
        elif role == "deleted":
            with open(path, "wb") as f:
                np.save(f, np.flatnonzero(store.dead).astype(np.int64))
        else:
            ann = self._ann
            if compact:  # a new structure over the compacted vectors; the index takes it once the save is done
                if self.active_kind == "hnsw":
                    log.info("rebuilding the HNSW graph over %d vectors without the %d deleted", len(store) -
                             store.n_dead, store.n_dead)
                    ann = index_kinds.new_hnsw(self.dim)
                    ann.add(np.load(d / names["vectors"], mmap_mode="r"))  # in one call, as _sync_ann says
                else:
                    ann = index_kinds.emptied(index_kinds.writable(self._ann, self._ann_path))
                    for block in npy_chunks(d / names["vectors"], index_kinds.ADD_CHUNK):
                        ann.add(block)
                self._pending_ann = ann
            index_kinds.write_ann(ann, path)

    def _manifest(self, files: dict[str, dict[str, Any]], compacted: bool) -> dict[str, Any]:
        kind = self.active_kind
        if kind in ANN_KINDS:
            library = index_kinds.library_info(kind, self._ann)
            if kind == "hnsw":
                library["ef_search"] = self.ef_search  # where format 1 read it from
        else:
            import torch

            library = {"name": "torch", "version": torch.__version__.split("+")[0]}
        deleted = 0 if compacted else self._store.n_dead
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model, "dim": self.dim,
                "count": len(self), "slots": len(self) + deleted, "deleted": deleted, "kind": kind,
                "requested_kind": self.kind, "metric": "inner_product", "library": library,
                "search": {"ef_search": self.ef_search, "nprobe": self.nprobe, "refine": self.refine},
                "created": self.created, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}

    @staticmethod
    def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
        return read_manifest(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> VectorIndex:
        """The index saved in ``directory``. ``mmap``: memory-map its files (see the module docstring) rather
        than read them into memory. ``verify``: check every file's sha256 against the manifest (reads them)."""
        d = Path(directory)
        m = read_manifest(d)
        files, kind = m["files"], m["kind"]
        slots = int(m.get("slots", m["count"]))
        roles = check_files(d, m, verify)
        search = m.get("search", {})
        index = cls(int(m["dim"]), m.get("model"), m.get("requested_kind", kind),
                    int(search.get("ef_search", m.get("library", {}).get("ef_search", HNSW_EF_SEARCH))),
                    int(search.get("nprobe", NPROBE)), int(search.get("refine", REFINE)))
        index.created, index._mmap = m.get("created", index.created), mmap
        items_path = d / files["items"]["name"]
        items = read_jsonl_items(items_path, slots) if items_path.suffix == ".jsonl" else \
            SavedItems(items_path, d / files["ids"]["name"], slots, mmap)
        dead = read_deleted(d / files["deleted"]["name"], slots) if "deleted" in files else None
        index._store.read(read_vectors(d / files["vectors"]["name"], slots, index.dim, mmap), items, dead)
        if len(index) != m["count"]:
            raise InputFileError(d / "index.json", f"says {m['count']} items, its files hold {len(index)}")
        role = ann_role(kind)
        if role:
            path = d / files[role]["name"]
            index._ann = index_kinds.read_ann(path, kind, index.dim, slots, m.get("library", {}), mmap)
            index._ann_kind, index._ann_path = kind, path
        index._home = d.resolve()
        index._files = {r: files[r] for r in roles} if "ids" in roles else {}  # format 1 is rewritten at its next save
        index._sync_ann()  # a requested kind the saved one no longer matches (auto crossing EXACT_MAX)
        log.info("loaded index %s: %d vectors, %d dims, %s search", d, len(index), index.dim, index.active_kind)
        return index

