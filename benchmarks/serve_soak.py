"""Soak test of ``bertkit serve``: does the server's resident memory level off under steady load?

The script starts the server (a subprocess on 127.0.0.1, as ``serve_load.py`` does) and drives ``/v1/embeddings``
with ``--clients`` concurrent clients, back to back, until ``--requests`` requests are answered. Each request holds
1 to ``--max-texts`` BBC News sentences (seeded), so batch shapes vary as they do in real traffic. The server's
resident set (VmRSS, and its anonymous part RssAnon, from /proc) is read when 500, 1,000, 2,000, 5,000, 10,000,
15,000 and 20,000 requests have been answered.

Goal (issue 15): RSS after 20,000 requests within 10% of RSS after 2,000.

``--variant NAME:KEY=VALUE,--flag=value,...`` runs the workload once more per variant, with those environment
variables and ``bertkit serve`` flags (e.g. ``glibc-default:BERTKIT_MALLOC_TUNING=0`` or
``no-trim:--heap-trim-interval=0``); that is how the cause was found (docs/benchmarks.md, "Server memory under
steady load").

    python benchmarks/serve_soak.py [--requests 20000] [--clients 8] [--max-texts 8] [--threads 2]
        [--variant NAME:KEY=VALUE,--flag=value,...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from serve_load import sample_sentences, server_process
from workers import write_report

HERE = Path(__file__).resolve().parent
CHECKPOINTS = (500, 1000, 2000, 5000, 10000, 15000, 20000)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon of a process, in MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) / 1024
    return out


async def soak(url: str, pid: int, requests: int, clients: int, max_texts: int, texts: list[str],
               seed: int = 0) -> dict[str, Any]:
    """Drive the server until ``requests`` are answered; the memory readings at each checkpoint."""
    rng = random.Random(seed)
    checkpoints = sorted({c for c in CHECKPOINTS if c < requests} | {requests})  # the end is always read
    readings: dict[int, dict[str, float]] = {}
    done, errors = 0, 0
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        (await c.post("/v1/embeddings", json={"input": texts[:4]})).raise_for_status()  # warm-up
        readings[0] = memory_mb(pid)
        sent = 0

        async def client() -> None:
            nonlocal sent, done, errors
            while sent < requests:
                sent += 1
                batch = [rng.choice(texts) for _ in range(rng.randint(1, max_texts))]
                r = await c.post("/v1/embeddings", json={"input": batch})
                if r.status_code != 200 or len(r.json()["data"]) != len(batch):
                    errors += 1
                done += 1
                if checkpoints and done >= checkpoints[0]:
                    readings[checkpoints.pop(0)] = memory_mb(pid)
                    print(f"  {done:>6} requests: RSS {readings[done]['VmRSS']:.0f} MB "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {"requests": done, "errors": errors, "seconds": time.perf_counter() - t0,
            "rss_mb": {str(k): v["VmRSS"] for k, v in sorted(readings.items())},
            "rss_anon_mb": {str(k): v.get("RssAnon") for k, v in sorted(readings.items())}}


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    """"NAME:KEY=VALUE,--flag=value,..." -> (name, server environment, extra `bertkit serve` flags)."""
    name, _, items = text.partition(":")
    env, flags = {}, []
    for item in filter(None, items.split(",")):
        key, _, value = item.partition("=")
        if key.startswith("--"):
            flags += [key, value] if value else [key]
        else:
            env[key] = value
    return name, env, flags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-texts", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:KEY=VALUE,--flag=value,... (server environment and flags)")
    p.add_argument("--no-default", action="store_true", help="run only the --variant configurations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2,000 requests (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "serve_soak.json"))
    args = p.parse_args()
    if args.quick:
        args.requests = 2000
    texts = sample_sentences(seed=args.seed)
    serve_args = [*([args.model] if args.model else []), "--threads", str(args.threads)]
    variants = ([] if args.no_default else [("default", {}, [])]) + [parse_variant(v) for v in args.variant]
    results = {}
    for name, env, flags in variants:
        print(f"{name} {env or ''} {' '.join(flags)}", file=sys.stderr)
        with server_process([*serve_args, *flags], env) as (url, proc):
            r = asyncio.run(soak(url, proc.pid, args.requests, args.clients, args.max_texts, texts, args.seed))
        rss = r["rss_mb"]
        if "2000" in rss and str(args.requests) in rss:
            r["growth_2k_to_end"] = rss[str(args.requests)] / rss["2000"] - 1
        results[name] = {"env": env, "flags": flags, **r}
    report = {"benchmark": "serve_soak", "model": args.model or "all-MiniLM-L6-v2", "requests": args.requests,
              "clients": args.clients, "max_texts": args.max_texts, "threads": args.threads, "seed": args.seed,
              "goal": "RSS after 20,000 requests within 10% of RSS after 2,000",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "results": results}
    if not args.quick:
        write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    points = sorted({int(k) for r in report["results"].values() for k in r["rss_mb"]})
    lines = ["| server | " + " | ".join(f"RSS MB @ {k:,}" for k in points) + " | growth 2k → end | errors |",
             "|---|" + "---:|" * len(points) + "---:|---:|"]
    for name, r in report["results"].items():
        cells = [f"{r['rss_mb'][str(k)]:.0f}" if str(k) in r["rss_mb"] else "–" for k in points]
        growth = r.get("growth_2k_to_end")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'–' if growth is None else f'{growth:+.1%}'} "
                     f"| {r['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
