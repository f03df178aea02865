"""Streaming embedding under three allocator settings: tokens/s and how the peak resident set moves part by part.

The question behind it (docs/benchmarks.md, "Embedding at corpus scale"): ``embed_to_parts`` maps every allocation
over 1 MiB (``utils.runtime.map_large_allocations``) so that memory stays flat over any number of parts, and pays
page faults for it. This measures the three settings side by side on the same texts, each in a fresh process:

- ``mapped``        what ``embed_to_parts`` does (tuned allocator, then large allocations mapped);
- ``tuned``         the loader's tuned allocator alone (freed blocks kept in the heap for reuse);
- ``tuned-arena1``  the same with one malloc arena (``GLIBC_TUNABLES=glibc.malloc.arena_max=1``);
- ``in-memory``     ``Encoder.embed`` on all texts at once (the reference for speed).

Each streamed run reports, after every part, its seconds and the process's high-water mark (``VmHWM``).

    python benchmarks/embed_allocator.py                 # 40,000 texts (4 parts of 10,000)
    python benchmarks/embed_allocator.py --texts 100000

JSON: benchmarks/results/embed_allocator.json, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MODES = ("mapped", "tuned", "tuned-arena1", "in-memory")


def high_water_mb() -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(mode: str, texts_file: str, out: str, model: str) -> None:
    """One run in this process; prints a JSON line."""
    import bertkit
    import bertkit.distributed.parts as parts

    enc = bertkit.load(model)
    if mode != "mapped":  # keep the loader's tuned setting for the whole run
        parts.map_large_allocations = lambda *a, **k: False
    texts = Path(texts_file).read_text(encoding="utf-8").splitlines()
    tokens = int(sum(enc.tokenizer.encode(texts, max_length=enc.max_length).lengths))
    enc.embed(texts[:256])  # warm-up, untimed
    per_part: list[dict] = []
    embed = enc.embed

    def timed(*a, **k):
        t0 = time.perf_counter()
        vectors = embed(*a, **k)
        per_part.append({"seconds": round(time.perf_counter() - t0, 2), "high_water_mb": round(high_water_mb(), 1)})
        return vectors

    t0 = time.perf_counter()
    if mode == "in-memory":
        timed(texts)
    else:
        enc.embed = timed
        parts.embed_to_parts(enc, [texts_file], out, progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "texts": len(texts), "tokens": tokens, "seconds": round(seconds, 1),
                      "tokens_per_s": round(tokens / seconds, 1), "parts": per_part,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=40_000)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--output", default=str(HERE / "results" / "embed_allocator.json"))
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2], args.model)
        return

    from embed_scale import make_texts
    from workers import write_report

    work = Path(tempfile.mkdtemp(prefix="embed_allocator."))
    runs = {}
    try:
        make_texts(args.texts, work / "texts.txt")
        for mode in args.modes.split(","):
            env = dict(os.environ)
            if mode == "tuned-arena1":
                env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=1"
            r = subprocess.run([sys.executable, __file__, "--model", args.model, "--worker", mode,
                                str(work / "texts.txt"), str(work / mode)], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
            runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps(runs[mode]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = runs.get("in-memory", {}).get("tokens_per_s")
    report = {"benchmark": "embed_allocator", "command": "python benchmarks/embed_allocator.py " + " ".join(
        sys.argv[1:]), "model": args.model, "texts": "BBC News sentences, first 8 words, cycled (as embed_scale)",
        "runs": runs, "vs_in_memory": {m: round(r["tokens_per_s"] / ref, 3) for m, r in runs.items()} if ref else None}
    write_report(args.output, report)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
