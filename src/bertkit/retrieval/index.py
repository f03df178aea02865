"""A saved vector index: unit-norm embeddings, their string ids and a JSON metadata object per item.

Small collections are searched exactly (``exact_search``); from ``EXACT_MAX`` vectors on, ``kind="auto"``
searches an HNSW graph (faiss ``IndexHNSWFlat``, inner product, M 16). faiss was chosen by measurement
(``benchmarks/index_bench.py``, 100k clustered 384-d vectors, 2 threads): at ef_search 64 both faiss and
usearch reach recall@10 0.98 against exact search, and faiss built faster (29 s vs 40 s), searched
batches faster (6,400 vs 3,700 queries/s) and answered one query in half the time (0.16 vs 0.30 ms).

On disk, a directory::

    index.json               the manifest: model, dimension, count, kind, library, files with sizes and sha256
    vectors-<gen>.npy        (count, dim) float32, the source of truth (exact search, rebuilding the graph)
    items-<gen>.jsonl        one {"id": ..., "metadata": {...}} per row
    hnsw-<gen>.faiss         the graph (kind hnsw only)

The manifest records how the vectors were made (the model, its pooling, the documents' prompt, and the
prompt queries get), so appends and searches embed the same way, whatever the model's defaults later are.

A save writes a new generation of files (each temp + fsync + rename) and then the manifest, which
names them; only then are the old generation's files removed. A save that fails or is killed leaves
the previous manifest and its files in place, so a directory always loads as the old index or the
new one, never a mix.

One writer at a time: a build or an append holds ``index_lock(directory)`` (``retrieval/index_lock.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.text_files import json_object, read_lines
from bertkit.encoder import Encoder
from bertkit.errors import BertkitError, CheckpointError, InputFileError
from bertkit.hub import ALIASES, BUILTIN_MODELS
from bertkit.loader import load
from bertkit.model.pooling import pooling_modes
from bertkit.retrieval.index_lock import IndexLocked, index_lock  # noqa: F401  (importable from here too)
from bertkit.retrieval.search import exact_search
from bertkit.utils.atomic import atomic_path, atomic_write_text, sha256_file

log = logging.getLogger("bertkit")

FORMAT, FORMAT_VERSION = "bertkit-index", 1
KINDS = ("auto", "exact", "hnsw")
EXACT_MAX = 20_000  # auto: exact search below this many vectors (~3 ms a query at 384 dims), HNSW from here
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 128, 64  # the benchmarked settings
# our data files, and the temp files of killed saves (atomic_path names them ".<name>.<random>.tmp")
_OWN_FILE = re.compile(r"^(\.?(vectors|items|hnsw)-[0-9a-f]{8}\.(npy|jsonl|faiss)|\.index\.json)(\.[^.]+\.tmp)?$")


def _faiss() -> Any:
    """faiss, imported on first use (exact-only indexes never need it), without its loader's INFO lines."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _model_key(name: str, directory: str | None) -> str:
    """What identifies a model: a built-in's name (its install path varies), else its resolved directory."""
    name = ALIASES.get(name, name)
    if name in BUILTIN_MODELS or not directory:
        return name
    return str(Path(directory).resolve())


def model_info(encoder: Encoder, pooling: str | Sequence[str] | None = None, doc_prompt: str | None = None,
               query_prompt: str | None = None) -> dict[str, Any]:
    """What the manifest records about the model that made the vectors, and how it embeds: pooling (None:
    the model's own) and the literal prompts of documents and queries (None: the model's own for the role)."""
    directory = str(encoder.source_dir.resolve()) if encoder.source_dir else None
    s = encoder.sentence
    if s.similarity == "dot":
        log.warning("model %s was trained for dot-product similarity; the index stores unit vectors and "
                    "searches by cosine", encoder.name)
    return {"name": encoder.name, "directory": directory,
            "pooling": list(s.modes if pooling is None else pooling_modes(pooling)), "normalized": True,
            "max_length": encoder.max_length, "document_prompt": s.role_prompt("document", prompt=doc_prompt),
            "query_prompt": s.role_prompt("query", prompt=query_prompt)}


class VectorIndex:
    """Rows of unit vectors with ids and metadata; exact or HNSW search by inner product (= cosine)."""

    def __init__(self, dim: int, model: dict[str, Any] | None = None, kind: str = "auto",
                 ef_search: int = HNSW_EF_SEARCH) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.dim, self.model, self.kind, self.ef_search = dim, model, kind, ef_search
        self.vectors = np.zeros((0, dim), np.float32)  # (count, dim)
        self.ids: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self._row: dict[str, int] = {}  # id -> row
        self._graph: Any = None  # faiss IndexHNSWFlat over rows [0, ntotal), built when first needed
        self._announced = ""
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, ident: object) -> bool:
        return ident in self._row

    def get(self, ident: str) -> dict[str, Any]:
        """The metadata of one id."""
        if ident not in self._row:
            raise KeyError(f"no item with id {ident!r} in the index")
        return self.metadata[self._row[ident]]

    def document(self, ident: str) -> str:
        """The text a reranker reads for one id: "title. text", as it was embedded."""
        meta = self.get(ident)
        if not isinstance(meta.get("text"), str):
            raise BertkitError(f"item {ident!r} of the index stores no text; re-ranking needs the documents' texts")
        title = meta.get("title")
        return f"{title.strip()}. {meta['text']}" if isinstance(title, str) and title.strip() else meta["text"]

    @property
    def active_kind(self) -> str:
        """The search that runs: ``kind``, with "auto" resolved by the collection's size."""
        if self.kind != "auto":
            return self.kind
        return "hnsw" if len(self) >= EXACT_MAX else "exact"

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, encoder: Encoder, ids: Sequence[str], texts: Sequence[str],
              metadata: Sequence[dict[str, Any] | None] | None = None, kind: str = "auto",
              batch_size: int = 32, progress: bool | None = None, *, pooling: str | Sequence[str] | None = None,
              doc_prompt: str | None = None, query_prompt: str | None = None) -> VectorIndex:
        """Embed ``texts`` and index them under ``ids``; each item's metadata gets ``text`` unless it has one.

        pooling: instead of the model's own. doc_prompt / query_prompt: the literal prompts documents get now
        and queries get at search time (None: the model's own "document" / "query" prompts; "" for none).
        """
        info = model_info(encoder, pooling, doc_prompt, query_prompt)
        index = cls(encoder.sentence.dim(info["pooling"]), info, kind)
        index.add_texts(encoder, ids, texts, metadata, batch_size=batch_size, progress=progress)
        return index

    def _embed(self, encoder: Encoder, texts: list[str], role: str, batch_size: int, progress: bool | None,
               prompt: str | None = None) -> np.ndarray:
        """Unit vectors of ``texts`` as the manifest says this index makes them ("document" or "query" side;
        ``prompt`` replaces the recorded one). Manifests from before prompts were recorded: the model's own."""
        m = self.model or {}
        prompt = m.get(f"{role}_prompt") if prompt is None else prompt
        return encoder.embed(texts, batch_size=batch_size, pooling=m.get("pooling"), normalize=True,
                             progress=progress, prompt=encoder.sentence.role_prompt(role, prompt=prompt))

    def add_texts(self, encoder: Encoder, ids: Sequence[str], texts: Sequence[str],
                  metadata: Sequence[dict[str, Any] | None] | None = None, batch_size: int = 32,
                  progress: bool | None = None) -> None:
        if self.model is None and not len(self):
            self.model = model_info(encoder)
        self.check_encoder(encoder)
        if isinstance(texts, str) or len(texts) != len(ids):
            raise ValueError(f"got {len(ids)} ids but {'a string' if isinstance(texts, str) else len(texts)} texts")
        metadata = self._check_new(ids, metadata)  # before the expensive part
        items = [{"text": t, **m} for t, m in zip(texts, metadata, strict=True)]
        self.add(ids, self._embed(encoder, list(texts), "document", batch_size, progress), items)

    def add(self, ids: Sequence[str], vectors: np.ndarray,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> None:
        """Append rows: ``vectors`` (n, dim) unit-norm float32, ``ids`` new and unique, one metadata dict each."""
        metadata = self._check_new(ids, metadata)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1) > 1e-3)
        if len(bad):  # inner product is cosine only on unit vectors
            raise ValueError(f"vectors must be L2-normalised (embed with normalize=True); the vector of id "
                             f"{ids[bad[0]]!r} has norm {norms[bad[0]]:.4f}")
        start = len(self)
        self.vectors = np.concatenate([self.vectors, vectors]) if start else vectors.copy()
        self.ids.extend(ids)
        self.metadata.extend(metadata)
        self._row.update((ident, start + i) for i, ident in enumerate(ids))
        self._sync_graph()

    def _check_new(self, ids: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None) -> list[dict]:
        """Refuse bad, repeated or existing ids and non-JSON metadata; the metadata as a list of dicts."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, not one string")
        seen: set[str] = set()
        for ident in ids:
            if not isinstance(ident, str) or not ident:
                raise ValueError(f"ids must be non-empty strings, got {ident!r}")
            if ident in seen:
                raise BertkitError(f"duplicate id {ident!r} in the new items")
            seen.add(ident)
        existing = [i for i in ids if i in self._row]
        if existing:
            more = f" (and {len(existing) - 5} more)" if len(existing) > 5 else ""
            raise BertkitError(f"{len(existing)} id(s) already in the index: "
                               f"{', '.join(map(repr, existing[:5]))}{more}")
        metadata = [None] * len(ids) if metadata is None else list(metadata)
        if len(metadata) != len(ids):
            raise ValueError(f"got {len(ids)} ids but {len(metadata)} metadata entries")
        out = []
        for ident, m in zip(ids, metadata, strict=True):
            m = {} if m is None else m
            try:
                if not isinstance(m, dict):
                    raise TypeError(f"a {type(m).__name__}, expected a JSON object")
                json.dumps(m)
            except (TypeError, ValueError) as e:
                raise ValueError(f"metadata of id {ident!r} is not a JSON object: {e}") from None
            out.append(dict(m))  # our own copy: later changes to the caller's dict do not leak in
        return out

    # ---- the HNSW graph --------------------------------------------------------------------
    def _sync_graph(self) -> None:
        """Build the graph when the kind asks for one, or add the rows it lacks; drop it when not."""
        if self.active_kind != "hnsw":
            self._graph = None
            return
        faiss = _faiss()
        if self._graph is None:
            log.info("building an HNSW graph over %d vectors (faiss %s, M=%d, ef_construction=%d)",
                     len(self), faiss.__version__, HNSW_M, HNSW_EF_CONSTRUCTION)
            self._graph = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self._graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if self._graph.ntotal < len(self):  # faiss numbers rows 0..ntotal-1 in add order: our rows
            self._graph.add(self.vectors[self._graph.ntotal:])

    def set_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self._sync_graph()

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
        kind = self.active_kind
        if self._announced != kind:  # say which search runs, once per index and kind
            how = f"faiss HNSW, ef_search={max(self.ef_search, k)}" if kind == "hnsw" else "exact_search"
            log.info("searching %d vectors: %s (%s)", len(self), kind, how)
            self._announced = kind
        if kind == "exact":
            scores, rows = exact_search(q, self.vectors, k)
        else:
            faiss = _faiss()
            self._sync_graph()
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            scores, rows = self._graph.search(np.ascontiguousarray(q), k, params=params)
            short = np.flatnonzero((rows < 0).any(axis=1))
            if len(short):  # the graph found fewer than k (tiny or odd collections): answer those exactly
                scores[short], rows[short] = exact_search(q[short], self.vectors, k)
        return scores, [[self.ids[j] for j in row] for row in rows]

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
        return self.search(self._embed(encoder, list(queries), "query", batch_size, False, prompt), k)

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder other than the one the vectors were made with: its scores would be meaningless."""
        dim = encoder.sentence.dim(self.model.get("pooling") if self.model else None)
        if dim != self.dim:
            built = f"model {self.model['name']!r}" if self.model else "vectors"
            raise BertkitError(f"the index holds {self.dim}-dimensional {built}; model {encoder.name!r} makes "
                               f"{dim}-dimensional vectors")
        if self.model is None:
            return
        source = str(encoder.source_dir) if encoder.source_dir else None
        if _model_key(encoder.name, source) != _model_key(self.model["name"], self.model.get("directory")):
            raise BertkitError(f"the index was built with model {self.model['name']!r} "
                               f"({self.model.get('directory')}); the query model is {encoder.name!r} ({source}): "
                               "search with the model the index was built with")

    def load_encoder(self, model: str | None = None) -> Encoder:
        """The index's own model (or ``model``, which must be the same one), truncating as at build time."""
        if self.model is None and model is None:
            raise BertkitError("the index records no model; name the model that made its vectors")
        if model is None:  # a built-in by name (its install path varies), a local model by its recorded path
            name, directory = self.model["name"], self.model.get("directory")  # type: ignore[index]
            builtin = ALIASES.get(name, name) in BUILTIN_MODELS
            model = directory if directory and not builtin and Path(directory).is_dir() else name
            try:
                encoder = load(model)
            except CheckpointError as e:
                raise CheckpointError(f"cannot load the index's model: {e}") from None
        else:
            encoder = load(model)
        self.check_encoder(encoder)
        if self.model and self.model.get("max_length"):
            encoder.max_length = int(self.model["max_length"])
        return encoder

    # ---- saving and loading ----------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically (see the module docstring); returns the manifest's path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._sync_graph()
        gen = secrets.token_hex(4)
        names = {"vectors": f"vectors-{gen}.npy", "items": f"items-{gen}.jsonl"}
        if self._graph is not None:
            names["hnsw"] = f"hnsw-{gen}.faiss"
        files: dict[str, dict[str, Any]] = {}
        try:
            for role, name in names.items():
                with atomic_path(d / name) as tmp:
                    self._write(role, tmp)
                files[role] = {"name": name, "bytes": (d / name).stat().st_size, "sha256": sha256_file(d / name)}
            atomic_write_text(d / "index.json", json.dumps(self._manifest(files), indent=2) + "\n")
        except BaseException:
            for name in names.values():  # this generation's finished files: the old manifest never names them
                (d / name).unlink(missing_ok=True)
            raise
        for f in d.iterdir():  # the previous generation, and leftovers of saves that were killed
            if _OWN_FILE.match(f.name) and f.name not in names.values():
                f.unlink(missing_ok=True)
        log.info("saved %d vectors (%s) to %s", len(self), self.active_kind, d)
        return d / "index.json"

    def _write(self, role: str, path: Path) -> None:
        if role == "vectors":
            with open(path, "wb") as f:
                np.save(f, self.vectors)
        elif role == "items":
            with open(path, "w", encoding="utf-8") as f:
                for ident, meta in zip(self.ids, self.metadata, strict=True):
                    f.write(json.dumps({"id": ident, "metadata": meta}, ensure_ascii=False) + "\n")
        else:
            faiss = _faiss()
            faiss.write_index(self._graph, str(path))

    def _manifest(self, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if self.active_kind == "hnsw":
            faiss = _faiss()
            library = {"name": "faiss-cpu", "version": faiss.__version__, "M": HNSW_M,
                       "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": self.ef_search}
        else:
            import torch

            library = {"name": "torch", "version": torch.__version__.split("+")[0]}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model, "dim": self.dim,
                "count": len(self), "kind": self.active_kind, "requested_kind": self.kind, "metric": "inner_product",
                "library": library, "created": self.created, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": files}

    @staticmethod
    def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
        d = Path(directory)
        path = d / "index.json"
        if not path.is_file():
            raise BertkitError(f"no index at {d}; build one with bertkit index build MODEL --input FILE --output {d}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputFileError(path, f"not a valid index manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputFileError(path, f"not a bertkit index manifest (no \"format\": \"{FORMAT}\")")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise InputFileError(path, f"index format {manifest['format_version']} is newer than this bertkit "
                                       f"reads ({FORMAT_VERSION}); upgrade bertkit")
        for key in ("dim", "count", "kind", "files"):
            if key not in manifest:
                raise InputFileError(path, f"missing field {key!r}")
        return manifest

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> VectorIndex:
        d = Path(directory)
        m = cls.read_manifest(d)
        files = m["files"]
        for role in ("vectors", "items", *(["hnsw"] if m["kind"] == "hnsw" else [])):
            if role not in files:
                raise InputFileError(d / "index.json", f"lists no {role} file")
            f, entry = d / files[role]["name"], files[role]
            if not f.is_file():
                raise InputFileError(f, "missing (index.json lists it); the index is incomplete")
            if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                raise InputFileError(f, "corrupt: its size or checksum differs from index.json")
        index = cls(int(m["dim"]), m.get("model"), m.get("requested_kind", m["kind"]),
                    int(m.get("library", {}).get("ef_search", HNSW_EF_SEARCH)))
        index.created = m.get("created", index.created)
        vec_path = d / files["vectors"]["name"]
        try:
            vectors = np.load(vec_path, allow_pickle=False)
        except ValueError as e:
            raise InputFileError(vec_path, f"not a readable .npy array ({e})") from None
        if vectors.dtype != np.float32 or vectors.shape != (m["count"], m["dim"]):
            raise InputFileError(vec_path, f"holds {vectors.dtype} {vectors.shape}, index.json says float32 "
                                           f"({m['count']}, {m['dim']})")
        items_path = d / files["items"]["name"]
        ids, metadata = [], []
        for n, line in enumerate(read_lines(items_path), start=1):
            obj = json_object(items_path, line, n)
            if not isinstance(obj.get("id"), str) or not isinstance(obj.get("metadata"), dict):
                raise InputFileError(items_path, "expected {\"id\": string, \"metadata\": object}", line=n)
            ids.append(obj["id"])
            metadata.append(obj["metadata"])
        if len(ids) != m["count"]:
            raise InputFileError(items_path, f"has {len(ids)} items, index.json says {m['count']}")
        index.vectors, index.ids, index.metadata = vectors, ids, metadata
        index._row = {ident: i for i, ident in enumerate(ids)}
        if len(index._row) != len(ids):
            raise InputFileError(items_path, "repeats an id")
        if m["kind"] == "hnsw":
            index._graph = _read_graph(d / files["hnsw"]["name"], index.dim, len(ids), m.get("library", {}))
        index._sync_graph()  # a requested kind the saved one no longer matches (auto crossing EXACT_MAX)
        log.info("loaded index %s: %d vectors, %d dims, %s search", d, len(index), index.dim, index.active_kind)
        return index


def _read_graph(path: Path, dim: int, count: int, library: dict[str, Any]) -> Any:
    faiss = _faiss()
    if library.get("name") == "faiss-cpu" and library.get("version") != faiss.__version__:
        log.info("%s was written by faiss %s; reading it with faiss %s", path, library.get("version"),
                 faiss.__version__)
    try:
        graph = faiss.read_index(str(path))
    except RuntimeError as e:
        raise InputFileError(path, f"not a readable faiss index ({str(e).splitlines()[-1][:200]})") from None
    if graph.d != dim or graph.ntotal != count or graph.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InputFileError(path, f"holds {graph.ntotal} vectors of dimension {graph.d}; index.json says {count} "
                                   f"of dimension {dim}, inner product")
    return graph
