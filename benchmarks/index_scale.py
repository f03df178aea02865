"""An index beyond RAM: 1M vectors, exact search against the compressed kinds (and HNSW), built by streaming
from embedding parts.

Workload: ``--n`` (1,000,000) seeded unit vectors of dimension 384 drawn like ``index_bench.py``'s (1,000
gaussian clusters grouped under 50 topics, log-normal cluster sizes, noise and a shared direction: neighbours
that matter, like sentence embeddings), written in chunks as an embedding-parts directory (what ``bertkit embed``
writes: Parquet parts + manifest.json), so the benchmark never holds the collection in memory either. 500 queries
are drawn the same way and are not in the collection.

For each kind, in fresh processes (2 threads, torch and faiss):

- build: ``VectorIndex.from_parts`` (what ``bertkit index build --input PARTS`` runs): seconds, peak RSS, disk;
- memory: resident memory the loaded index adds to a process that has imported its libraries: after ``load``
  and 5 single-query searches (the goal: compressed <= 1/8 of exact), and again after every measurement below.
  Split into anonymous memory (the process's own) and file-backed pages (memory-mapped files the OS may evict
  and re-read: the page cache, shared with other readers), and of those the index's own files (``smaps``).
  Before the baseline, a small throwaway index of the kind is built and searched, so that the first touch of
  library code and buffers is not counted as the index's;
- recall@10 against exact search over the 500 queries, batch throughput (all queries in one call, best of 2),
  single-query latency (median and p99 over 200 queries one at a time; 30 for exact), over a sweep of the kind's
  search settings (IVF: nprobe x refine; HNSW: ef_search).

The machine may be shared: the load average before and after is recorded.

    python benchmarks/index_scale.py [--n 1000000] [--kinds exact,ivfpq,ivfsq,hnsw] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
DIM, K, QUERIES, PART_ROWS = 384, 10, 500, 50_000
KINDS = ["exact", "ivfpq", "ivfsq", "hnsw"]
SWEEPS = {"exact": [{}],
          "ivfpq": [{"nprobe": p, "refine": r} for p in (8, 16, 32, 64) for r in (1, 5, 10, 20)],
          "ivfsq": [{"nprobe": p, "refine": r} for p in (8, 16, 32) for r in (1, 5, 10)],
          "hnsw": [{"ef_search": e} for e in (32, 64, 128)]}
DEFAULTS = {"ivfpq": {"nprobe": 16, "refine": 10}, "ivfsq": {"nprobe": 16, "refine": 10}, "hnsw": {"ef_search": 64}}


def write_parts(n: int, out: Path, seed: int = 0) -> np.ndarray:
    """``n`` vectors as an embedding-parts directory at ``out``, a part at a time; returns the queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertkit.utils.atomic import sha256_file

    rng = np.random.default_rng(seed)

    def noise(rows: int) -> np.ndarray:  # rows of norm ~1
        return rng.standard_normal((rows, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM))

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    shared, topics = unit(noise(1)), unit(noise(50))
    centres = unit(topics[rng.integers(50, size=1000)] + 1.2 * noise(1000))
    weights = rng.lognormal(0.0, 1.0, 1000)
    weights /= weights.sum()

    def draw(rows: int) -> np.ndarray:
        return unit(0.35 * shared + centres[rng.choice(1000, size=rows, p=weights)] + noise(rows))

    out.mkdir(parents=True, exist_ok=True)
    parts = {}
    for k, start in enumerate(range(0, n, PART_ROWS)):
        x = draw(min(PART_ROWS, n - start))
        name = f"part-{k:05d}.parquet"
        pq.write_table(pa.table({"row": pa.array(np.arange(start, start + len(x), dtype=np.int64)),
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)}),
                       out / name)
        parts[str(k)] = {"file": name, "first_row": start, "rows": len(x), "sha256": sha256_file(out / name)}
    settings = {"model": "synthetic-gaussian-mixture", "model_directory": None, "pooling": None, "normalize": True,
                "prompt": "", "max_length": None, "with_text": False, "shard": [0, 1], "part_rows": PART_ROWS}
    (out / "manifest.json").write_text(json.dumps({"format": "bertkit-embeddings", "version": 1, "settings": settings,
                                                   "complete": True, "parts": parts, "rows": n, "dim": DIM}))
    return draw(QUERIES)


def memory() -> dict[str, float]:
    """This process's resident memory in MB, after glibc hands freed heap back: total, anonymous, file-backed."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"] + fields.get("RssShmem", 0)}


def mapped_mb(directory: str) -> float:
    """Resident pages of the files under ``directory`` this process has memory-mapped (``/proc/self/smaps``), MB."""
    prefix, total, inside = str(Path(directory).resolve()), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line: range perms ... path
                inside = len(head) > 5 and head[5].startswith(prefix)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


def delta(after: dict[str, float], before: dict[str, float], directory: str) -> dict[str, float]:
    return {**{k: after[k] - before[k] for k in after}, "index_files": mapped_mb(directory)}


def warm_up(kind: str) -> None:
    """Run the code paths of ``kind`` once on a small throwaway index, so that the memory measured next is the
    index's, not the first touch of library code and buffers (faiss' kernels, Arrow's readers)."""
    from bertkit.retrieval.index import VectorIndex

    rng = np.random.default_rng(1)
    x = rng.standard_normal((12_000, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as d:
        small = VectorIndex(DIM, kind=kind)
        small.add([str(i) for i in range(len(x))], x)
        small.save(d)
        loaded = VectorIndex.load(d)
        loaded.search(x[:5], K)
        loaded.search(x[0], K)
        del small, loaded


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def build_worker(kind: str, parts: str, out: str, threads: int) -> dict:
    import resource

    from bertkit.retrieval.index import VectorIndex

    set_threads(threads)
    t = time.perf_counter()
    index = VectorIndex.from_parts(parts, out, kind)
    seconds = time.perf_counter() - t
    files = json.loads((Path(out) / "index.json").read_text())["files"]
    return {"kind": kind, "active_kind": index.active_kind, "build_s": seconds,
            "build_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "disk_mb": {role: f["bytes"] / 2**20 for role, f in files.items()}}


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len({int(i) for i in f} & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def search_worker(kind: str, index_dir: str, queries_path: str, truth_path: str, threads: int) -> dict:
    import faiss  # noqa: F401  (the libraries' own memory is not the index's)
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    from bertkit.retrieval.index import VectorIndex

    set_threads(threads)
    queries = np.load(queries_path)
    warm_up(kind)
    base = memory()
    t = time.perf_counter()
    index = VectorIndex.load(index_dir)
    load_s = time.perf_counter() - t
    after_load = delta(memory(), base, index_dir)
    for q in queries[:5]:
        index.search(q, K)
    result = {"kind": kind, "load_s": load_s, "memory_after_load_mb": after_load,
              "memory_after_5_searches_mb": delta(memory(), base, index_dir), "sweep": []}
    truth = np.load(truth_path) if Path(truth_path).is_file() else None
    single = 30 if kind == "exact" else 200
    for setting in SWEEPS[kind]:
        for name, value in setting.items():
            setattr(index, name, value)
        best, found = float("inf"), None
        for _ in range(2):
            t = time.perf_counter()
            _, found = index.search(queries, K)
            best = min(best, time.perf_counter() - t)
        times = []
        for q in queries[:single]:
            t = time.perf_counter()
            index.search(q, K)
            times.append(time.perf_counter() - t)
        times.sort()
        if truth is None:  # the exact run makes the ground truth
            truth = np.array([[int(i) for i in f] for f in found])
            np.save(truth_path, truth)
        result["sweep"].append({**setting, "recall_at_10": recall(found, truth), "batch_qps": len(queries) / best,
                                "single_ms_median": 1000 * statistics.median(times),
                                "single_ms_p99": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]})
    result["memory_after_all_mb"] = delta(memory(), base, index_dir)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir, removed at the end)")
    p.add_argument("--quick", action="store_true", help="50,000 vectors; writes nothing unless --output")
    p.add_argument("--output", default=None, help="default: results/index_scale.json (full runs only)")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        what, *rest = args.worker
        fn = build_worker if what == "build" else search_worker
        print(json.dumps(fn(*rest, threads=args.threads)))
        return
    if args.quick:
        args.n = 50_000
    work = Path(args.work or tempfile.mkdtemp(prefix="index_scale."))
    kinds = args.kinds.split(",")
    if kinds[0] != "exact":
        raise SystemExit("--kinds must start with exact: its results are the ground truth")
    load_before = os.getloadavg()
    t = time.perf_counter()
    queries = write_parts(args.n, work / "parts")
    np.save(work / "queries.npy", queries)
    print(f"wrote {args.n:,} vectors as parts in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    (work / "truth.npy").unlink(missing_ok=True)
    results = {}
    for kind in kinds:
        built = spawn(__file__, ["--threads", str(args.threads), "--worker", "build", kind, str(work / "parts"),
                                 str(work / kind)])
        print(f"{kind}: built in {built['build_s']:.0f} s", file=sys.stderr)
        searched = spawn(__file__, ["--threads", str(args.threads), "--worker", "search", kind, str(work / kind),
                                    str(work / "queries.npy"), str(work / "truth.npy")])
        results[kind] = {**built, **searched}
        print(f"{kind}: {json.dumps(searched['memory_after_5_searches_mb'])}", file=sys.stderr)
        if kind != "exact":
            shutil.rmtree(work / kind)  # disk: each index holds its own copy of the vectors
    exact_mb = results["exact"]["memory_after_5_searches_mb"]["rss"]
    for kind, r in results.items():
        r["memory_vs_exact"] = r["memory_after_5_searches_mb"]["rss"] / exact_mb
        r["at_defaults"] = next((s for s in r["sweep"] if all(s.get(k) == v for k, v in
                                                              DEFAULTS.get(kind, {}).items())), r["sweep"][0])
    report = {"benchmark": "index_scale", "n": args.n, "dim": DIM, "queries": QUERIES, "k": K,
              "threads": args.threads, "part_rows": PART_ROWS, "defaults": DEFAULTS,
              "load_average_before_after": [load_before, os.getloadavg()], "results": results}
    if not args.work:
        shutil.rmtree(work)
    output = args.output or (None if args.quick else str(HERE / "results" / "index_scale.json"))
    if output:
        write_report(output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"{report['n']:,} clustered unit vectors (dim {report['dim']}), {report['queries']} queries, "
        f"top-{report['k']}, {report['threads']} threads. Memory: resident memory the loaded index adds to its "
        "process after load + 5 searches (anonymous + file-backed pages of memory-mapped files); after all: after "
        "every search below.",
        "",
        "| kind | build s | disk MB | load s | memory MB (anon + file) | vs exact | after all MB | setting "
        "| recall@10 | batch q/s | single ms (median / p99) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for kind, r in report["results"].items():
        m, after = r["memory_after_5_searches_mb"], r["memory_after_all_mb"]
        for s in r["sweep"]:
            setting = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("nprobe", "refine", "ef_search")) or "–"
            if s is r["at_defaults"]:
                setting = f"**{setting}**"
            lines.append(f"| {kind} | {r['build_s']:.0f} | {sum(r['disk_mb'].values()):,.0f} | {r['load_s']:.1f} "
                         f"| {m['rss']:,.0f} ({m['anon']:,.0f} + {m['file']:,.0f}) | {r['memory_vs_exact']:.3f} "
                         f"| {after['rss']:,.0f} | {setting} | {s['recall_at_10']:.3f} | {s['batch_qps']:,.0f} "
                         f"| {s['single_ms_median']:.2f} / {s['single_ms_p99']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
