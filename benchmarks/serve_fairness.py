"""Fairness of ``bertkit serve``: while one client sends maximal requests back to back, how long do other
clients' small requests take?

The script starts the server (a subprocess on 127.0.0.1, as ``serve_load.py`` does), once per configuration:

  sliced    the defaults: a request runs in slices of ``--slice-tokens`` (256) that take turns with other
            requests' slices, in engine calls of about ``--max-call-ms`` (250 ms) (``serve/batcher.py``)
  one-call  ``--slice-tokens 1000000000``: a request is one slice, so one engine call, as before issue 15

Workload, for ``--seconds`` after a warm-up: one "big" client posts maximal requests to ``/v1/embeddings`` back
to back: 256 texts of 4,000 characters each (BBC News text; ~1 MB, within every default limit; each text is
truncated to the model's 256 tokens, so 65,536 tokens a request). ``--small-clients`` other clients each post one
BBC sentence, wait a random 0-100 ms, and post again. Reported: the small requests' latency (p50/p95/p99/max),
how many big requests finished and their latency, and errors. Clients and server share this machine's CPUs.

Goal (issue 15): p99 latency of the small requests under 1 s.

    python benchmarks/serve_fairness.py [--seconds 60] [--small-clients 4] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from serve_load import _percentile, sample_sentences, server
from workers import write_report

HERE = Path(__file__).resolve().parent
CONFIGS = {"sliced": [], "one-call": ["--slice-tokens", "1000000000"]}
BIG_TEXTS, BIG_CHARS = 256, 4000


def big_texts(sentences: list[str], seed: int = 0) -> list[str]:
    """256 texts of exactly 4,000 characters of BBC News text."""
    rng = random.Random(seed)
    out = []
    for _ in range(BIG_TEXTS):
        text = ""
        while len(text) < BIG_CHARS:
            text += rng.choice(sentences) + " "
        out.append(text[:BIG_CHARS])
    return out


async def drive(url: str, seconds: float, small_clients: int, sentences: list[str], big: list[str],
                seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    body = json.dumps({"input": big}).encode()
    small_lat: list[float] = []
    big_lat: list[float] = []
    errors: dict[str, int] = {}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=300) as big_client, \
            httpx.AsyncClient(base_url=url, timeout=300,
                              limits=httpx.Limits(max_connections=max(small_clients, 1))) as c:
        # warm-up: one of each kind
        (await big_client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
         ).raise_for_status()
        (await c.post("/v1/embeddings", json={"input": sentences[0]})).raise_for_status()
        deadline = time.perf_counter() + seconds

        async def big_loop() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await big_client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
                if r.status_code == 200 and len(r.json()["data"]) == BIG_TEXTS:
                    big_lat.append(time.perf_counter() - t0)
                else:
                    error(f"big HTTP {r.status_code}")

        async def small_loop() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.post("/v1/embeddings", json={"input": rng.choice(sentences)})
                if r.status_code == 200 and len(r.json()["data"]) == 1:
                    small_lat.append(time.perf_counter() - t0)
                else:
                    error(f"small HTTP {r.status_code}")
                await asyncio.sleep(rng.uniform(0, 0.1))

        t0 = time.perf_counter()
        await asyncio.gather(big_loop(), *(small_loop() for _ in range(small_clients)))
        wall = time.perf_counter() - t0

    small = sorted(x * 1000 for x in small_lat)
    return {"seconds": wall, "errors": errors,
            "small": {"requests": len(small), "p50_ms": _percentile(small, 50), "p95_ms": _percentile(small, 95),
                      "p99_ms": _percentile(small, 99), "max_ms": small[-1] if small else None},
            "big": {"requests": len(big_lat), "mean_s": sum(big_lat) / len(big_lat) if big_lat else None,
                    "max_s": max(big_lat) if big_lat else None, "body_bytes": len(body)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--small-clients", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="15 s, sliced only (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "serve_fairness.json"))
    args = p.parse_args()
    if args.quick:
        args.seconds, args.configs = 15.0, "sliced"
    sentences = sample_sentences(seed=args.seed)
    big = big_texts(sentences, args.seed)
    engine = [*([args.model] if args.model else []), "--threads", str(args.threads)]
    results = {}
    for name in args.configs.split(","):
        with server([*engine, *CONFIGS[name]]) as url:
            results[name] = asyncio.run(drive(url, args.seconds, args.small_clients, sentences, big, args.seed))
        s = results[name]["small"]
        print(f"{name}: small p99 {s['p99_ms']} ms over {s['requests']} requests; "
              f"{results[name]['big']['requests']} big requests; errors {results[name]['errors']}", file=sys.stderr)
    report = {"benchmark": "serve_fairness", "model": args.model or "all-MiniLM-L6-v2", "seconds": args.seconds,
              "small_clients": args.small_clients, "threads": args.threads, "seed": args.seed,
              "big_request": f"{BIG_TEXTS} texts x {BIG_CHARS} characters, back to back",
              "goal": "p99 latency of small requests < 1 s",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "results": results}
    if not args.quick:
        write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| server | small requests | p50 ms | p95 ms | p99 ms | max ms | big requests done | big mean s "
             "| errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in report["results"].items():
        s, b = r["small"], r["big"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        mean = "–" if b["mean_s"] is None else f"{b['mean_s']:.1f}"
        def ms(x: float | None) -> str:
            return "–" if x is None or x != x else f"{x:.0f}"
        lines.append(f"| {name} | {s['requests']:,} | {ms(s['p50_ms'])} | {ms(s['p95_ms'])} | {ms(s['p99_ms'])} "
                     f"| {ms(s['max_ms'])} | {b['requests']} | {mean} | {errors} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
