"""The glibc allocator setting's effect: 256-token batches with and without it, in one run.

Each setting runs in its own process (the setting is process-wide), alternating over rounds.

    python benchmarks/allocator.py [--rounds 3] [--batch-size 32] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from workers import write_report

HERE = Path(__file__).resolve().parent


def worker(batch_size: int, length: int, threads: int) -> dict:
    import numpy as np
    import torch

    import bertkit
    from bertkit.model.attention import Packing

    torch.set_num_threads(threads)
    enc = bertkit.load()
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(1000, 29000, batch_size * length))
    packing = Packing.from_lengths([length] * batch_size)
    with torch.inference_mode():
        enc.model.forward_packed(ids, packing)
        t = time.perf_counter()
        for _ in range(4):
            enc.model.forward_packed(ids, packing)
        dt = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"tokens_per_s": 4 * batch_size * length / dt, "peak_rss_mb": ru.ru_maxrss / 1024,
            "minor_page_faults": ru.ru_minflt, "sys_seconds": ru.ru_stime}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(HERE / "results" / "allocator.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.batch_size, args.length, args.threads)))
        return
    runs: dict[str, list[dict]] = {"tuned": [], "glibc default": []}
    for _ in range(args.rounds):
        for name, flag in (("tuned", "1"), ("glibc default", "0")):
            env = dict(os.environ, BERTKIT_MALLOC_TUNING=flag)
            out = subprocess.run([sys.executable, __file__, "--worker", "--batch-size", str(args.batch_size),
                                  "--length", str(args.length), "--threads", str(args.threads)],
                                 capture_output=True, text=True, env=env, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    ratio = summary["tuned"]["tokens_per_s"] / summary["glibc default"]["tokens_per_s"]
    report = {"benchmark": "allocator", "batch_size": args.batch_size, "length": args.length,
              "rounds": args.rounds, "results": summary, "speedup": ratio, "raw": runs}
    write_report(args.output, report)
    print(f"batch {args.batch_size} x {args.length} tokens, median of {args.rounds} rounds\n")
    print("| allocator | tokens/s | minor page faults | sys s | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for k, r in summary.items():
        print(f"| {k} | {r['tokens_per_s']:,.0f} | {r['minor_page_faults']:,.0f} | {r['sys_seconds']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |")
    print(f"\nspeed-up from the setting: {ratio:.2f}x")


if __name__ == "__main__":
    main()
