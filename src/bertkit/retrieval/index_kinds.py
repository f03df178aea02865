"""The faiss structures behind the approximate kinds of ``VectorIndex`` (``retrieval/index.py``): their settings
and why, how they are trained, searched, written and read.

Every structure numbers its entries by the index's slots: faiss gives the vectors it is handed 0, 1, 2, ... in
add order, and the index adds its slots in order, so a faiss label is a slot (a row of vectors-<gen>.npy).
Deleted slots stay in the structure until a compaction rebuilds it; searches skip them with an
``IDSelectorBitmap`` of the live slots (``live_selector``), so a deleted item never comes back.

hnsw   ``IndexHNSWFlat``, inner product, M 16, ef_construction 128, ef_search 64: recall@10 0.98 on 100k
       clustered 384-d vectors (``benchmarks/index_bench.py``). It keeps its own float copy of every vector
       in RAM (plus ~128 bytes of links each): the fast kind while the collection fits in memory. Its vectors
       are added in one call: faiss builds a worse graph from chunks (300k of those vectors, ef_search 64:
       recall@10 0.91 added at once, 0.88 in chunks of 131,072, 0.86 in chunks of 16,384).

ivfpq  ``IndexIVFPQ``, inner product on unit vectors: a coarse k-means quantizer of ``nlist`` lists, and each
       vector's residual coded by product quantization in ``dim / 4`` sub-vectors of 8 bits: 1 byte per 4
       dims, 1/16 of float32 (96 bytes for 384 dims, + 8 bytes of id in its list). PQ codes alone are too
       coarse for a good top 10, so a search takes the ``k x refine`` best candidates by code (refine 10) and
       re-ranks them exactly against their float vectors, read from vectors-<gen>.npy on disk (only theirs).
       Chosen by measurement on clustered 384-d vectors (``benchmarks/index_scale.py``'s data): at 200k, PQ
       alone gave recall@10 0.59, refine 5 0.96, refine 10 0.99; with 64 sub-vectors instead of 96 refine 10
       gave 0.95, with 48 0.90 (so dim / 4). At 1M: PQ alone 0.50, refine 5 0.91, refine 10 0.98, refine 20
       1.00, the same from nprobe 8 to 64, in 43 MB of resident memory after load and 5 searches (exact
       search: 1,493 MB) and 123 MB after 8,000 more (the IVF file is 101 MB).
ivfsq  ``IndexIVFScalarQuantizer``, 8 bits a dimension (1/4 of float32), refined the same way: recall@10 0.98
       before refining, 1.00 after (1M); no PQ codebooks to train, so it builds about twice as fast, but its
       lists are 4x ivfpq's (375 MB at 1M).

IVF settings, for ``count`` vectors at training time:

- ``nlist`` = the power of two nearest sqrt(count), from 16 to 65,536 (1,024 lists at 1M vectors: ~1,000 a list);
- trained on a seeded sample of max(50,000, 40 x nlist) vectors (all of them when fewer): k-means wants >= 39
  points a centroid, and PQ's 256 codes per sub-vector want ~10,000;
- 10 k-means iterations for both the coarse quantizer and the PQ codebooks (faiss' default for PQ is 25:
  measured at 200k, 10 gives the same recall (0.995 vs 0.993 at refine 10) and trains 2.6x faster);
- ``nprobe`` (lists searched) is a search-time setting, 16 by default: on the benchmark's well-separated
  clusters 8 did as well; 16 leaves room for real data, whose neighbours straddle more lists. ``refine`` likewise
  (10; 1 turns it off).

An IVF kind needs ``IVF_MIN_COUNT`` (10,000) vectors to train; with fewer the index searches exactly (it says
so, once) and trains its quantizers when a later add reaches that many.

On disk the IVF structure is faiss' own file format; it is read with ``IO_FLAG_MMAP``: its lists are mapped, not
copied, so only the pages searches touch become resident (file-backed pages, which the OS may evict). A mapped
structure is read-only: one that is about to change is read again into memory first (``writable``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.errors import ConfigError, InputFileError

log = logging.getLogger("bertkit")

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 128, 64  # the benchmarked settings
IVF_KINDS = ("ivfpq", "ivfsq")
ANN_KINDS = ("hnsw", *IVF_KINDS)
KINDS = ("auto", "exact", *ANN_KINDS)  # auto: exact or hnsw by size (retrieval/index.py)
IVF_MIN_COUNT = 10_000  # below this an IVF kind searches exactly: too few points to train PQ's 256 codes a sub-vector
TRAIN_SAMPLE, TRAIN_SEED, KMEANS_NITER = 50_000, 0, 10
NPROBE, REFINE = 16, 10
ADD_CHUNK = 16_384  # vectors handed to faiss at a time when (re)building from a file: bounded temporaries


def faiss_module() -> Any:
    """faiss, imported on first use (exact-only indexes never need it), without its loader's INFO lines."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: the power of two nearest sqrt(count), within [16, 65536]."""
    return int(min(65_536, max(16, 2 ** round(math.log2(max(count, 1)) / 2))))


def pq_subvectors(dim: int) -> int:
    """PQ sub-vectors for ``dim``: dim / 4 (one byte codes 4 dims), else the largest divisor of dim below it."""
    return max(m for m in range(1, max(dim // 4, 1) + 1) if dim % m == 0)


def train_sample_size(count: int, nlist: int) -> int:
    return min(count, max(TRAIN_SAMPLE, 40 * nlist))


def new_hnsw(dim: int) -> Any:
    faiss = faiss_module()
    graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return graph


def train_ivf(kind: str, dim: int, count: int, sample: Callable[[np.ndarray], np.ndarray]) -> Any:
    """A trained, empty IVF structure of ``kind`` for ``count`` vectors. ``sample(rows)`` -> (len(rows), dim)
    float32: the vectors of those rows (sorted, seeded, without repeats)."""
    faiss = faiss_module()
    nlist = nlist_for(count)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivfpq":
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_subvectors(dim), 8, faiss.METRIC_INNER_PRODUCT)
        ivf.pq.cp.niter = KMEANS_NITER
    elif kind == "ivfsq":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"not an IVF kind: {kind!r}")
    ivf.cp.niter = KMEANS_NITER  # (faiss' Python wrapper keeps ``quantizer`` alive as long as ``ivf``)
    n = train_sample_size(count, nlist)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(count, size=n, replace=False))
    log.info("training %s on %d of %d vectors (faiss %s, nlist=%d%s)", kind, n, count, faiss.__version__, nlist,
             f", {pq_subvectors(dim)} sub-vectors of 8 bits" if kind == "ivfpq" else ", 8 bits a dimension")
    ivf.train(np.ascontiguousarray(sample(rows), dtype=np.float32))
    return ivf


def library_info(kind: str, ann: Any) -> dict[str, Any]:
    """What the manifest records about the structure of ``kind``."""
    faiss = faiss_module()
    info: dict[str, Any] = {"name": "faiss-cpu", "version": faiss.__version__}
    if kind == "hnsw":
        info.update(M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    else:
        ivf = faiss.extract_index_ivf(ann)
        info.update(nlist=int(ivf.nlist), kmeans_niter=KMEANS_NITER, train_seed=TRAIN_SEED)
        if kind == "ivfpq":
            info.update(pq_subvectors=int(faiss.downcast_index(ann).pq.M), pq_bits=8)
        else:
            info.update(sq_bits=8)
    return info


def live_selector(dead: np.ndarray) -> tuple[Any, np.ndarray]:
    """(an IDSelectorBitmap of the slots not in ``dead`` (n,) bool, the bitmap it reads: keep it alive with it)."""
    faiss = faiss_module()
    bitmap = np.packbits(~dead, bitorder="little")  # faiss reads bit (i & 7) of byte i >> 3
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def search_ann(kind: str, ann: Any, queries: np.ndarray, k: int, selector: Any = None, ef_search: int = HNSW_EF_SEARCH,
               nprobe: int = NPROBE) -> tuple[np.ndarray, np.ndarray]:
    """(scores, slots) (n, k) of the structure, best first; slot -1 where it found fewer than k."""
    faiss = faiss_module()
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
    else:
        params = faiss.SearchParametersIVF(nprobe=max(1, min(nprobe, faiss.extract_index_ivf(ann).nlist)))
    if selector is not None:
        params.sel = selector
    return ann.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)


def write_ann(ann: Any, path: Path) -> None:
    faiss_module().write_index(ann, str(path))


def read_ann(path: Path, kind: str, dim: int, count: int, library: dict[str, Any], mmap: bool) -> Any:
    """The structure saved at ``path``, checked against the manifest; IVF lists memory-mapped with ``mmap``."""
    faiss = faiss_module()
    if library.get("name") == "faiss-cpu" and library.get("version") != faiss.__version__:
        log.info("%s was written by faiss %s; reading it with faiss %s", path, library.get("version"),
                 faiss.__version__)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap and kind in IVF_KINDS else 0
    try:
        ann = faiss.read_index(str(path), flags)
    except RuntimeError as e:
        raise InputFileError(path, f"not a readable faiss index ({str(e).splitlines()[-1][:200]})") from None
    want = {"hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ, "ivfsq": faiss.IndexIVFScalarQuantizer}[kind]
    if (not isinstance(ann, want) or ann.d != dim or ann.ntotal != count
            or ann.metric_type != faiss.METRIC_INNER_PRODUCT):
        raise InputFileError(path, f"holds a {type(ann).__name__} of {ann.ntotal} vectors of dimension {ann.d}; "
                                   f"index.json says {kind}, {count} of dimension {dim}, inner product")
    return ann


def is_mapped(ann: Any) -> bool:
    """Whether ``ann``'s lists are a read-only memory map of its file."""
    faiss = faiss_module()
    ivf = faiss.try_extract_index_ivf(ann)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def writable(ann: Any, path: Path | None) -> Any:
    """``ann``, or when its lists are memory-mapped (read-only) the same structure read into memory from ``path``."""
    if not is_mapped(ann):
        return ann
    faiss = faiss_module()
    if path is None or not path.is_file():
        raise InputFileError(path, "the index's file was replaced since it was loaded (another writer saved); "
                                   "load the index again to change it")
    log.info("reading %s into memory to change it", path)
    return faiss.read_index(str(path))


def emptied(ann: Any) -> Any:
    """A copy of the trained IVF ``ann`` (in memory: see ``writable``) without its vectors, for compaction."""
    fresh = faiss_module().clone_index(ann)
    fresh.reset()
    return fresh
