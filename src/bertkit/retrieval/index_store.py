"""What an index stores (``retrieval/index.py``): its slots' vectors, ids and metadata, and their files.

A slot is a row of the index's vectors. ``Slots`` holds them: the slots of the saved generation the index was
read from, then those added since (in memory), and which slots are deleted. Ids and metadata are kept in one of
two stores:

- ``SavedItems``: a saved generation's ``items-<gen>.arrow`` and ``ids-<gen>.npy``, memory-mapped. An id or a
  metadata object is decoded when asked for, so a loaded index of 1M items holds no Python object per item
  (measured in Python lists and dicts: 1M short ids, empty metadata objects and the id -> slot dict take
  198 MB; with a 40-character text in each object, 390 MB).
- ``MemoryItems``: Python lists and a dict: items added since the index was loaded, and all items of an index
  saved in format 1 (``items-<gen>.jsonl``), which is read whole.

On disk::

    items-<gen>.arrow   Arrow IPC file, uncompressed (so it can be memory-mapped), in batches: columns ``id``
                        and ``metadata`` (the JSON object as text, null for {}), one row per slot, in slot order
    ids-<gen>.npy       (live slots,) int64: the slots not deleted, sorted by id; finding an id is a bisection
                        (20 probes at 1M)
"""

from __future__ import annotations

import bisect
import json
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.text_files import json_object, read_lines
from bertkit.errors import BertkitError, InputFileError
from bertkit.utils.atomic import sha256_file

BATCH = 65_536  # slots per Arrow batch when items held in memory are written: bounded temporaries
MANY = 64  # from this many ids on, one hash join (find) or a take per chunk (id_list) instead of one each
WRITE_CHUNK = 16_384  # vectors copied at a time when they are written (from a memory map): bounded temporaries


def _arrow() -> tuple[Any, Any, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    return pa, pc, ipc


def items_schema() -> Any:
    pa, _, _ = _arrow()
    return pa.schema([("id", pa.large_string()), ("metadata", pa.large_string())])


def items_batch(ids: Sequence[str], metadata: Sequence[dict[str, Any] | None]) -> Any:
    """One Arrow batch of ``ids`` and their metadata objects."""
    pa, _, _ = _arrow()
    meta = [json.dumps(m, ensure_ascii=False) if m else None for m in metadata]
    return pa.record_batch([pa.array(list(ids), pa.large_string()), pa.array(meta, pa.large_string())],
                           schema=items_schema())


class MemoryItems:
    """Ids and metadata in Python lists; ``find`` through a dict of the ids still present."""

    def __init__(self, ids: list[str] | None = None, metadata: list[dict[str, Any]] | None = None) -> None:
        self.ids: list[str] = ids or []
        self.metadata: list[dict[str, Any]] = metadata or []
        self.slot: dict[str, int] = {ident: i for i, ident in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, ids: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        self.metadata.extend(metadata)
        self.slot.update((ident, start + i) for i, ident in enumerate(ids))

    def forget(self, ident: str) -> None:
        """``ident`` is no longer found here (deleted, or replaced by a later slot)."""
        self.slot.pop(ident, None)

    def find(self, ident: str) -> int:
        return self.slot.get(ident, -1)

    def find_many(self, idents: Sequence[str]) -> np.ndarray:
        return np.array([self.slot.get(i, -1) for i in idents], dtype=np.int64)

    def id_list(self, slots: np.ndarray) -> list[str]:
        return [self.ids[s] for s in slots]

    def metadata_of(self, slot: int) -> dict[str, Any]:
        return self.metadata[slot]

    def batches(self, keep: np.ndarray) -> Iterator[Any]:
        """Arrow batches of the slots where ``keep`` (len(self),) is true, in slot order."""
        for s in range(0, len(self), BATCH):
            rows = np.flatnonzero(keep[s:s + BATCH]) + s
            if len(rows):
                yield items_batch([self.ids[r] for r in rows], [self.metadata[r] for r in rows])


def read_jsonl_items(path: Path, count: int) -> MemoryItems:
    """The items of a format-1 index: one {"id": ..., "metadata": {...}} a line."""
    ids, metadata = [], []
    for n, line in enumerate(read_lines(path), start=1):
        obj = json_object(path, line, n)
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("metadata"), dict):
            raise InputFileError(path, "expected {\"id\": string, \"metadata\": object}", line=n)
        ids.append(obj["id"])
        metadata.append(obj["metadata"])
    if len(ids) != count:
        raise InputFileError(path, f"has {len(ids)} items, index.json says {count}")
    items = MemoryItems(ids, metadata)
    if len(items.slot) != len(ids):
        raise InputFileError(path, "repeats an id")
    return items


class SavedItems:
    """The items of a saved generation, read from its Arrow file (memory-mapped with ``mmap``) and id order."""

    def __init__(self, path: Path, order_path: Path | None, count: int, mmap: bool = True) -> None:
        pa, _, ipc = _arrow()
        try:
            source = pa.memory_map(str(path), "r") if mmap else pa.OSFile(str(path), "rb")
            table = ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise InputFileError(path, f"not a readable Arrow items file ({e})") from None
        if table.schema.names[:2] != ["id", "metadata"] or table.num_rows != count:
            raise InputFileError(path, f"holds {table.num_rows} items with columns {table.schema.names}; "
                                       f"index.json says {count} with columns id, metadata")
        self.path, self._ids, self._meta = path, table.column("id"), table.column("metadata")
        self._starts = np.cumsum([0] + [len(c) for c in self._ids.chunks])  # each chunk's first slot
        self._order: np.ndarray | None = None
        if order_path is not None:
            try:
                order = np.load(order_path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except ValueError as e:
                raise InputFileError(order_path, f"not a readable .npy array ({e})") from None
            if order.ndim != 1 or len(order) > count or order.dtype != np.int64:
                raise InputFileError(order_path, f"holds {order.dtype} {order.shape}, expected int64 (at most "
                                                 f"{count},)")
            self._order = order

    def __len__(self) -> int:
        return len(self._ids)

    def _id_at(self, slot: int) -> str:
        return self._ids[int(slot)].as_py()

    def find(self, ident: str) -> int:
        if not len(self):
            return -1
        if self._order is None:
            raise BertkitError(f"{self.path}: no id order to look ids up in")
        order = self._order
        i = bisect.bisect_left(range(len(order)), ident, key=lambda j: self._id_at(order[j]))
        return int(order[i]) if i < len(order) and self._id_at(order[i]) == ident else -1

    def find_many(self, idents: Sequence[str]) -> np.ndarray:
        if len(idents) < MANY or not len(self) or self._order is None:
            return np.array([self.find(i) for i in idents], dtype=np.int64)
        pa, pc, _ = _arrow()
        # one hash join against the ids of the ordered (live when saved) slots: a slot deleted before the save may
        # share its id with the live one that replaced it (transient memory: ~2x the ids' bytes)
        order = np.asarray(self._order)
        found = pc.index_in(pa.array(list(idents), pa.large_string()),
                            value_set=self._ids.take(pa.array(order)).combine_chunks())
        at = found.fill_null(-1).to_numpy().astype(np.int64)
        return np.where(at >= 0, order[np.maximum(at, 0)], -1)

    def id_list(self, slots: np.ndarray) -> list[str]:
        """The ids of ``slots``, taken chunk by chunk (a ChunkedArray's own ``take`` joins its chunks first:
        14 ms a call at 1M ids, most of a search's time)."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) < MANY:  # a search's top k: one scalar each (~10 us) beats a take per chunk (~80 us)
            return [self._ids[int(s)].as_py() for s in slots]
        pa, _, _ = _arrow()
        chunk = np.searchsorted(self._starts, slots, side="right") - 1
        out: list[str] = [""] * len(slots)
        for c in np.unique(chunk):
            at = np.flatnonzero(chunk == c)
            for p, ident in zip(at, self._ids.chunk(int(c)).take(pa.array(slots[at] - self._starts[c])).to_pylist(),
                                strict=True):
                out[p] = ident
        return out

    def metadata_of(self, slot: int) -> dict[str, Any]:
        text = self._meta[int(slot)].as_py()
        return json.loads(text) if text else {}

    def batches(self, keep: np.ndarray) -> Iterator[Any]:
        pa, _, _ = _arrow()
        start = 0
        for ids, meta in zip(self._ids.chunks, self._meta.chunks, strict=True):
            mask = keep[start:start + len(ids)]
            start += len(ids)
            if mask.all():
                yield pa.record_batch([ids, meta], schema=items_schema())
            elif mask.any():
                yield pa.record_batch([ids, meta], schema=items_schema()).filter(pa.array(mask))


class ItemsWriter:
    """An items file written batch by batch (Arrow, ``items_schema``): ``with ItemsWriter(path) as w: w.write(b)``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        pa, _, ipc = _arrow()
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = ipc.new_file(self._sink, items_schema())
        self.rows = 0

    def write(self, batch: Any) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def __enter__(self) -> ItemsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()
        self._sink.close()


def write_items(path: Path, batches: Iterable[Any]) -> int:
    """An items file of ``batches``; returns the number of rows written."""
    with ItemsWriter(path) as w:
        for batch in batches:
            w.write(batch)
    return w.rows


def write_id_order(items_path: Path, path: Path, live: np.ndarray) -> None:
    """``ids-<gen>.npy`` for the items file at ``items_path``: its ``live`` (slots,) slots sorted by id (deleted
    ones are never looked up); an id two live slots share is an error naming it."""
    pa, pc, _ = _arrow()
    ids = SavedItems(items_path, None, count_items(items_path))._ids
    slots = np.flatnonzero(live)
    ids = ids.take(pa.array(slots)) if len(slots) < len(ids) else ids
    order = slots[pc.sort_indices(ids).to_numpy()]
    if len(order) > 1:
        ranked = SavedItems(items_path, None, count_items(items_path))._ids.take(pa.array(order))
        same = pc.equal(ranked.slice(1), ranked.slice(0, len(order) - 1))
        if pc.any(same).as_py():
            first = int(pc.index(same, True).as_py())
            raise BertkitError(f"id {ranked[first].as_py()!r} is given to more than one item")
    with open(path, "wb") as f:
        np.save(f, order.astype(np.int64))


def count_items(path: Path) -> int:
    pa, _, ipc = _arrow()
    with pa.memory_map(str(path), "r") as source:
        reader = ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


class NpyWriter:
    """A (rows, dim) float32 .npy file written chunk by chunk as they come: no array of the whole in memory (the
    header, which np.load reads, says the final shape up front; closing checks that many rows came)."""

    def __init__(self, path: str | os.PathLike[str], rows: int, dim: int) -> None:
        self.path, self.rows, self.dim, self.written = path, rows, dim, 0
        self._f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self._f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                       "fortran_order": False, "shape": (rows, dim)})

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != self.dim:
            raise ValueError(f"expected chunks of shape (n, {self.dim}), got {chunk.shape}")
        if self.written + len(chunk) > self.rows:
            raise ValueError(f"{self.path}: more than the {self.rows} rows its header says")
        self._f.write(memoryview(chunk).cast("B"))
        self.written += len(chunk)

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._f.close()
        if exc_type is None and self.written != self.rows:
            raise ValueError(f"{self.path}: wrote {self.written} rows, the header says {self.rows}")


def write_npy(path: str | os.PathLike[str], rows: int, dim: int, chunks: Iterable[np.ndarray]) -> None:
    with NpyWriter(path, rows, dim) as w:
        for chunk in chunks:
            w.write(chunk)


def read_vectors(path: Path, slots: int, dim: int, mmap: bool) -> np.ndarray:
    """A saved (slots, dim) float32 array, memory-mapped with ``mmap``."""
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise InputFileError(path, f"not a readable .npy array ({e})") from None
    if vectors.dtype != np.float32 or vectors.shape != (slots, dim):
        raise InputFileError(path, f"holds {vectors.dtype} {vectors.shape}, index.json says float32 ({slots}, {dim})")
    return vectors


def file_entry(d: Path, name: str) -> dict[str, Any]:
    """A file's entry in an index manifest."""
    return {"name": name, "bytes": (d / name).stat().st_size, "sha256": sha256_file(d / name)}


def check_items(ids: Sequence[str], metadata: Sequence[dict[str, Any] | None] | None) -> list[dict[str, Any]]:
    """Refuse bad or repeated ids and non-JSON metadata; the metadata as a list of (copied) dicts."""
    if isinstance(ids, str):
        raise TypeError("ids must be a list of strings, not one string")
    seen: set[str] = set()
    for ident in ids:
        if not isinstance(ident, str) or not ident:
            raise ValueError(f"ids must be non-empty strings, got {ident!r}")
        if ident in seen:
            raise BertkitError(f"duplicate id {ident!r} in the new items")
        seen.add(ident)
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


def check_vectors(ids: Sequence[str], vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as (len(ids), dim) float32, refused unless finite and unit-norm (naming an id)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(ids), dim):
        raise ValueError(f"expected vectors of shape ({len(ids)}, {dim}), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > 1e-3)
    if len(bad):  # inner product is cosine only on unit vectors
        raise ValueError(f"vectors must be L2-normalised (embed with normalize=True); the vector of id "
                         f"{ids[bad[0]]!r} has norm {norms[bad[0]]:.4f}")
    return vectors


class Slots:
    """An index's slots: vectors, ids and metadata, a slot each, and which are deleted. First the slots of the
    saved generation the index was read from (``base``: a memory map and SavedItems; for format 1, arrays and
    MemoryItems), then those added since, in memory (``new``)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.base: np.ndarray = np.zeros((0, dim), np.float32)  # (saved slots, dim): array or memory map
        self.base_items: MemoryItems | SavedItems = MemoryItems()
        self.new = np.zeros((0, dim), np.float32)  # (slots added since, dim)
        self.new_items = MemoryItems()
        self.dead = np.zeros(0, bool)  # (slots,) deleted
        self.n_dead = 0
        self._rows: weakref.finalize | None = None  # closes the memory-mapped base's file, open for pread
        self._fd = -1

    def __len__(self) -> int:
        return len(self.base) + len(self.new)

    @property
    def count(self) -> int:
        """Slots not deleted: the items."""
        return len(self) - self.n_dead

    def live(self) -> np.ndarray:
        return np.flatnonzero(~self.dead)

    def find(self, idents: Sequence[str]) -> np.ndarray:
        """(len(idents),) int64: each id's live slot, -1 where absent."""
        b = len(self.base)
        out = self.new_items.find_many(idents)
        out[out >= 0] += b
        rest = np.flatnonzero(out < 0)
        if len(rest) and len(self.base_items):
            found = self.base_items.find_many([idents[i] for i in rest])
            ok = found >= 0
            ok[ok] = ~self.dead[found[ok]]
            out[rest[ok]] = found[ok]
        return out

    def ids(self, slots: np.ndarray) -> list[str]:
        slots = np.asarray(slots, dtype=np.int64)
        b = len(self.base)
        out: list[str] = [""] * len(slots)
        saved = np.flatnonzero(slots < b)
        for p, ident in zip(saved, self.base_items.id_list(slots[saved]), strict=True):
            out[p] = ident
        for p in np.flatnonzero(slots >= b):
            out[p] = self.new_items.ids[slots[p] - b]
        return out

    def metadata(self, slot: int) -> dict[str, Any]:
        b = len(self.base)
        return self.base_items.metadata_of(slot) if slot < b else self.new_items.metadata_of(slot - b)

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), dim) float32: the vectors of those slots.

        Saved vectors that are memory-mapped are read with ``pread``, a row at a time, not through the map: the
        kernel maps a file's cached pages in whole folios (here up to ~1 MB), so gathering 100 random rows of a
        73 MB map made 67 MB of it resident in the process; read, they stay in the OS page cache only."""
        slots = np.asarray(slots, dtype=np.int64)
        b = len(self.base)
        out = np.empty((len(slots), self.dim), np.float32)
        saved = slots < b
        if saved.any() and self._rows is not None:
            for i in np.flatnonzero(saved):
                self._read_rows(int(slots[i]), out[i:i + 1])
        elif saved.any():
            out[saved] = self.base[slots[saved]]
        if not saved.all():
            out[~saved] = self.new[slots[~saved] - b]
        return out

    def live_vectors(self) -> np.ndarray:
        """(count, dim): the live slots' vectors (the memory map itself when that is all of them)."""
        if self.n_dead:
            return self.vectors(self.live())
        if not len(self.new):
            return self.base
        return self.new if not len(self.base) else np.concatenate([self.base, self.new])

    def _read_rows(self, start: int, out: np.ndarray) -> None:
        """Read saved rows ``start``.. into ``out`` (n, dim)."""
        pread_rows(self._fd, self.base.offset + start * self.dim * 4, out)

    def chunks(self, size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(first slot, vectors) of the slots from ``start`` on, ``size`` at a time, saved ones read (not mapped:
        building or rewriting from a 1.5 GB map made all of it resident in the process)."""
        b = len(self.base)
        for s in range(start, len(self), size):
            e = min(s + size, len(self))
            if e <= b and self._rows is not None:
                block = np.empty((e - s, self.dim), np.float32)
                self._read_rows(s, block)
            elif e <= b:
                block = self.base[s:e]
            else:
                block = self.new[s - b:e - b] if s >= b else self.vectors(np.arange(s, e))
            yield s, block

    def span(self, start: int) -> np.ndarray:
        """The vectors of every slot from ``start`` on, as one array: a view of the memory map or of the added
        rows when they lie in one of them (no copy: faiss reads a map's pages as it copies them into its own)."""
        b = len(self.base)
        if start >= b:
            return self.new[start - b:]
        return self.base[start:] if not len(self.new) else np.concatenate([self.base[start:], self.new])

    def blocks(self, size: int) -> list[tuple[int, np.ndarray]]:
        """(first slot, vectors) of every slot, in views of at most ``size`` rows (a memory map's: exact search
        reads every row, and a search after it reads them again from memory)."""
        return [(s, a[s - o:s - o + size]) for o, a in ((0, self.base), (len(self.base), self.new))
                for s in range(o, o + len(a), size)]

    def append(self, ids: Sequence[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> None:
        self.new = np.concatenate([self.new, vectors]) if len(self.new) else vectors.copy()
        self.new_items.append(list(ids), metadata)
        self.dead = np.concatenate([self.dead, np.zeros(len(ids), bool)])

    def delete(self, slots: np.ndarray) -> None:
        b = len(self.base)
        self.dead[slots] = True
        self.n_dead += len(slots)
        for s in slots[slots >= b]:
            self.new_items.forget(self.new_items.ids[s - b])

    def read(self, vectors: np.ndarray, items: MemoryItems | SavedItems, dead: np.ndarray | None = None) -> None:
        """Make a saved generation's ``vectors`` and ``items`` the slots (none added since; ``dead``: deleted)."""
        self.base, self.base_items = vectors, items
        if self._rows is not None:
            self._rows()  # close the previous file
        self._rows = None
        if isinstance(vectors, np.memmap):  # a descriptor for pread, closed with this object (or the next read)
            fd = os.open(vectors.filename, os.O_RDONLY)
            self._rows = weakref.finalize(self, os.close, fd)
            self._fd = fd
        self.new, self.new_items = np.zeros((0, self.dim), np.float32), MemoryItems()
        self.dead = np.zeros(len(vectors), bool) if dead is None else dead
        self.n_dead = int(self.dead.sum())

    def write_vectors(self, path: Path, keep: np.ndarray) -> None:
        """The vectors of the slots where ``keep`` (slots,) is true, as a .npy file."""
        with NpyWriter(path, int(keep.sum()), self.dim) as out:
            for start, block in self.chunks(WRITE_CHUNK):
                out.write(block[keep[start:start + len(block)]])

    def write_items(self, path: Path, keep: np.ndarray) -> None:
        b = len(self.base)
        write_items(path, chain(self.base_items.batches(keep[:b]), self.new_items.batches(keep[b:])))



def pread_rows(fd: int, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` (contiguous) with the bytes of file ``fd`` from ``offset``, by ``preadv``: read, not mapped,
    so the pages stay in the OS page cache and out of the process's resident memory."""
    view = memoryview(out).cast("B")
    while len(view):  # a read may return less than asked
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise OSError(f"file descriptor {fd}: ended at byte {offset}, {len(view)} bytes short")
        view, offset = view[n:], offset + n


def npy_chunks(path: Path, size: int) -> Iterator[np.ndarray]:
    """The rows of a saved (n, dim) float32 .npy file, ``size`` at a time, read with ``pread_rows``."""
    vectors = np.load(path, mmap_mode="r")  # for the header's shape and offset: no row is touched
    fd = os.open(path, os.O_RDONLY)
    try:
        for s in range(0, len(vectors), size):
            block = np.empty((min(size, len(vectors) - s), vectors.shape[1]), np.float32)
            pread_rows(fd, vectors.offset + s * vectors.shape[1] * 4, block)
            yield block
    finally:
        os.close(fd)
