"""Embedding throughput: bertkit's three execution paths against HF transformers, in one run.

Workload: 2,000 token sequences cut from the BBC News corpus at seeded, long-tailed lengths
(log-normal, median 24, clipped to 8..128 tokens), batch 32, 2 threads. Every engine gets the same
token ids and the same batches; tokenization is excluded for all of them.

  unsorted  batches in input order (what a plain transformers loop does)
  sorted    batches of length-sorted sequences (what sentence-transformers does)

Every engine runs with bertkit's allocator setting (``bertkit.utils.runtime.tune_allocator``), the
peer included, so the comparison measures the engines and not the allocator.
Each engine runs in its own subprocess (so peak RSS is its own), engines interleaved round by round;
the median tokens/s over rounds is reported. Tokens are real (non-pad) tokens. "GEMM peak" is a
2048^3 fp32 matmul timed by the same script; the fraction of it counts the linear layers' FLOPs
(2 x linear weights per token per layer, 21.2 MFLOP/token for all-MiniLM-L6-v2).

    python benchmarks/embed_throughput.py [--rounds 3] [--texts 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
ENGINES = ["transformers-sdpa", "bertkit-unpadded", "bertkit-sdpa", "bertkit-reference"]


def make_workload(n_texts: int, seed: int = 0) -> list[list[int]]:
    """Seeded sequences of real BBC token ids, [CLS] ... [SEP], lengths 8..128 with a long tail."""
    from bertkit.data.corpora import load_bbc_news
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.hub import resolve_model_dir

    tok = WordPieceTokenizer.from_dir(resolve_model_dir())
    docs = [a.body for a in load_bbc_news()[:400]]
    stream = [t for ids in tok.encode(docs, max_length=10**9).ids for t in ids[1:-1]]
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(24), 0.75, n_texts)), 8, 128).astype(int)
    starts = rng.integers(0, len(stream) - 130, n_texts)
    return [[tok.cls_id, *stream[s:s + n - 2], tok.sep_id] for s, n in zip(starts, lengths, strict=True)]


def batches(seqs: list[list[int]], order: list[int], bs: int) -> list[list[list[int]]]:
    return [[seqs[i] for i in order[s:s + bs]] for s in range(0, len(order), bs)]


def padded(batch: list[list[int]]):
    import torch

    L = max(map(len, batch))
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    mask = torch.zeros(len(batch), L, dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def worker(engine: str, n_texts: int, bs: int, threads: int) -> dict:
    import torch

    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()  # every engine, the peer too, runs under the same allocator setting
    seqs = make_workload(n_texts)
    lengths = [len(s) for s in seqs]
    orders = {"unsorted": list(range(n_texts)), "sorted": sorted(range(n_texts), key=lambda i: -lengths[i])}
    result: dict = {"engine": engine, "tokens": sum(lengths)}
    if engine == "gemm-peak":
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        for _ in range(3):
            torch.mm(a, b)
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            best = max(best, 5 * 2 * 2048**3 / (time.perf_counter() - t))
        return {"engine": engine, "gflops": best / 1e9}

    import bertkit
    from bertkit.model.attention import Packing

    enc = bertkit.load()
    cfg = enc.model.config
    if engine.startswith("transformers"):
        from transformers import BertModel

        model = BertModel.from_pretrained(enc.source_dir, attn_implementation="sdpa").eval()
        del enc

        def run(batch):
            ids, mask = batch
            model(input_ids=ids, attention_mask=mask)

        prep = padded
    else:
        enc.model.path = engine.split("-", 1)[1]
        model = enc.model
        if model.path == "unpadded":
            def prep(batch):
                return torch.tensor([t for s in batch for t in s]), Packing.from_lengths([len(s) for s in batch])

            def run(batch):
                model.forward_packed(*batch)
        else:
            prep = padded

            def run(batch):
                ids, mask = batch
                model(ids, mask)
    with torch.inference_mode():
        for mode, order in orders.items():
            prepared = [prep(b) for b in batches(seqs, order, bs)]
            for b in prepared[:3]:
                run(b)  # warm-up
            t = time.perf_counter()
            for b in prepared:
                run(b)
            result[f"{mode}_tokens_per_s"] = result["tokens"] / (time.perf_counter() - t)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["linear_flops_per_token"] = 2 * cfg.num_hidden_layers * (
        4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    return result


def parity(n_texts: int, bs: int) -> dict:
    """Max abs difference of last hidden states (real tokens) vs transformers, per path."""
    import torch
    from transformers import BertModel

    import bertkit

    seqs = make_workload(n_texts)[: 4 * bs]
    enc = bertkit.load()
    hf = BertModel.from_pretrained(enc.source_dir, attn_implementation="eager").eval()
    diffs = {}
    with torch.inference_mode():
        for path in ("reference", "sdpa", "unpadded"):
            worst = 0.0
            for b in batches(seqs, list(range(len(seqs))), bs):
                ids, mask = padded(b)
                ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
                out = enc.model(ids, mask, path=path).last_hidden_state
                m = mask.bool()
                worst = max(worst, (out[m] - ref[m]).abs().max().item())
            diffs[path] = worst
    return diffs


def profile(n_texts: int, bs: int, threads: int) -> str:
    """torch.profiler table of bertkit-unpadded on the sorted batches: where the time goes."""
    import torch
    from torch.profiler import profile as torch_profile

    import bertkit
    from bertkit.model.attention import Packing
    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()
    seqs = make_workload(n_texts)
    order = sorted(range(n_texts), key=lambda i: -len(seqs[i]))
    model = bertkit.load().model
    prepared = [(torch.tensor([t for s in b for t in s]), Packing.from_lengths([len(s) for s in b]))
                for b in batches(seqs, order, bs)]
    with torch.inference_mode():
        for b in prepared[:3]:
            model.forward_packed(*b)
        with torch_profile() as prof:
            for b in prepared:
                model.forward_packed(*b)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--quick", action="store_true", help="200 texts, 1 round (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "embed_throughput.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of bertkit-unpadded, sorted")
    args = p.parse_args()
    if args.quick:
        args.texts, args.rounds = 200, 1
    if args.worker:
        print(json.dumps(worker(args.worker, args.texts, args.batch_size, args.threads)))
        return
    if args.parity:
        print(json.dumps(parity(args.texts, args.batch_size)))
        return
    if args.profile:
        print(profile(args.texts, args.batch_size, args.threads))
        return

    common = ["--texts", str(args.texts), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    engines = args.engines.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in [*engines, "gemm-peak"]}
    for r in range(args.rounds):
        for e in [*engines, "gemm-peak"]:
            res = spawn(__file__, ["--worker", e, *common], TOKENIZERS_PARALLELISM="false")
            runs[e].append(res)
            print(f"round {r + 1}: {e}: " + ", ".join(f"{k}={v:.0f}" for k, v in res.items()
                                                      if isinstance(v, float)), file=sys.stderr)
    peak = statistics.median(x["gflops"] for x in runs["gemm-peak"]) * 1e9
    summary = {}
    for e in engines:
        rs = runs[e]
        row = {k: statistics.median(x[k] for x in rs) for k in ("unsorted_tokens_per_s", "sorted_tokens_per_s",
                                                                "peak_rss_mb")}
        flops = rs[0]["linear_flops_per_token"]
        row["unsorted_frac_gemm_peak"] = row["unsorted_tokens_per_s"] * flops / peak
        row["sorted_frac_gemm_peak"] = row["sorted_tokens_per_s"] * flops / peak
        summary[e] = row
    base = summary.get("transformers-sdpa")
    if base:
        for row in summary.values():
            row["x_transformers_unsorted"] = row["unsorted_tokens_per_s"] / base["unsorted_tokens_per_s"]
            row["x_transformers_sorted"] = row["sorted_tokens_per_s"] / base["sorted_tokens_per_s"]
            # The goal's yardstick: our batches (unsorted or sorted) against transformers on sorted batches.
            row["unsorted_x_transformers_sorted"] = row["unsorted_tokens_per_s"] / base["sorted_tokens_per_s"]
        # Round by round (the two ran minutes apart at most): robust to the machine's drift.
        for e, row in summary.items():
            for mode in ("unsorted", "sorted"):
                row[f"paired_x_transformers_{mode}"] = statistics.median(
                    a[f"{mode}_tokens_per_s"] / b[f"{mode}_tokens_per_s"]
                    for a, b in zip(runs[e], runs["transformers-sdpa"], strict=True))
    report = {
        "benchmark": "embed_throughput",
        "model": "all-MiniLM-L6-v2",
        "texts": args.texts, "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "tokens": runs[engines[0]][0].get("tokens"),
        "gemm_peak_gflops": peak / 1e9,
        "linear_mflops_per_token": runs[engines[0]][0].get("linear_flops_per_token", 0) / 1e6,
        "max_abs_diff_vs_transformers": spawn(__file__, ["--parity", *common], TOKENIZERS_PARALLELISM="false"),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "results": summary,
        "raw": runs,
    }
    if not args.quick:  # a smoke test never replaces the committed measurement
        write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"Measured {report['texts']} texts, {report['tokens']:,} real tokens, batch {report['batch_size']}, "
        f"{report['threads']} threads, median of {report['rounds']} rounds; fp32 GEMM peak "
        f"{report['gemm_peak_gflops']:.0f} GFLOP/s ({report['linear_mflops_per_token']:.1f} MFLOP/token).",
        "",
        "| engine | unsorted tok/s | sorted tok/s | vs transformers unsorted | vs transformers sorted "
        "| % of GEMM peak (unsorted / sorted) | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    raw = report["raw"]
    for e, r in report["results"].items():
        cells = []
        for mode in ("unsorted", "sorted"):
            ratios = [a[f"{mode}_tokens_per_s"] / b[f"{mode}_tokens_per_s"]
                      for a, b in zip(raw[e], raw["transformers-sdpa"], strict=True)]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})")
        lines.append(
            f"| {e} | {r['unsorted_tokens_per_s']:,.0f} | {r['sorted_tokens_per_s']:,.0f} | {cells[0]} | {cells[1]} "
            f"| {100 * r['unsorted_frac_gemm_peak']:.0f}% / {100 * r['sorted_frac_gemm_peak']:.0f}% "
            f"| {r['peak_rss_mb']:.0f} |")
    diffs = report["max_abs_diff_vs_transformers"]
    lines += ["", "Ratios: median of the per-round ratios (range over rounds). Max abs difference of last hidden "
              "states from transformers (eager), fp32, 128 sequences: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
