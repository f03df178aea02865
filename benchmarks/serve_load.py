"""Load test of ``bertkit serve``: N concurrent clients against a real server, micro-batching on and off.

The script starts the server itself (a subprocess on 127.0.0.1, a free port), waits for /healthz, drives
it, and stops it with SIGTERM, once per configuration, same model and engine flags:

  batching     the server's defaults (concurrent requests merged into engine calls)
  no-batching  ``--no-batching``: one request per engine call

Workload: ``--clients`` concurrent clients (one ``httpx.AsyncClient``, a connection each), each posting
``/v1/embeddings`` requests back to back until ``--seconds`` have passed or ``--max-requests`` were sent,
whichever comes first. Each request holds ``--texts-per-request`` sentences drawn (seeded) from BBC News
bodies (4 to 100 words), so request lengths vary as real text does. Before the timer starts, one request
per client warms up the server and opens the connections; it is not counted.

Reported per configuration: requests, requests/s, texts/s, tokens/s (the responses' usage.total_tokens),
client-side latency (p50/p95/p99/max), errors by kind (HTTP status, exception type, or a response of the
wrong shape; every response's shape is checked), and from the server's /metrics (diffed around the timed
run) the mean texts and tokens per engine call. Clients and server share this machine's CPUs.

    python benchmarks/serve_load.py [--model NAME] [--clients 64] [--seconds 30] [--max-requests 100000]
        [--texts-per-request 1] [--threads 2] [--dtype fp32] [--int8] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from workers import write_report

HERE = Path(__file__).resolve().parent
CONFIGS = {"batching": [], "no-batching": ["--no-batching"]}
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 45  # the server lets in-flight requests finish for up to 30 s


# ---- workload -------------------------------------------------------------------------------------------------
def sample_sentences(n: int = 5000, seed: int = 0) -> list[str]:
    """``n`` seeded sentences of BBC News bodies, 4 to 100 words each."""
    from bertkit.data.corpora import load_bbc_news

    sentences = [s.strip() for a in load_bbc_news(dedupe=True) for s in re.split(r"(?<=[.!?])\s+", a.body)]
    # Very long "sentences" are lists or tables the split missed; very short ones are datelines.
    sentences = [s for s in sentences if 4 <= len(s.split()) <= 100]
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


# ---- the load ---------------------------------------------------------------------------------------------------
def batch_metrics(text: str, capability: str = "embeddings") -> dict[str, float]:
    """The engine-call histograms' _sum/_count for one capability from Prometheus text (absent: no keys)."""
    out: dict[str, float] = {}
    pattern = re.compile(r'^(bertkit_batch_(?:size|tokens)_(?:sum|count))\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and f'capability="{capability}"' in m.group(2):
            out[m.group(1)] = float(m.group(3))
    return out


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation: a reported latency was observed)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def _shape_ok(body: Any, n: int, dim: int) -> bool:
    data = body.get("data") if isinstance(body, dict) else None
    return (isinstance(data, list) and len(data) == n
            and all(isinstance(d, dict) and isinstance(d.get("embedding"), list) and len(d["embedding"]) == dim
                    for d in data)
            and [d.get("index") for d in data] == list(range(n)))


async def run_load_async(base_url: str, clients: int, seconds: float, max_requests: int, texts: list[str],
                         texts_per_request: int = 1, dim: int | None = None, seed: int = 0,
                         timeout_s: float = 120.0) -> dict[str, Any]:
    """Drive a running server's /v1/embeddings with ``clients`` concurrent clients for ``seconds`` or
    ``max_requests`` requests, whichever comes first. ``dim`` (the model's embedding size) is learned from
    the warm-up if not given. Returns counts, rates, latencies (ms), errors by kind and batch metrics."""
    if clients < 1 or seconds <= 0 or max_requests < 1 or texts_per_request < 1 or not texts:
        raise ValueError("clients, seconds, max_requests and texts_per_request must be positive, texts non-empty")
    rng = random.Random(seed)
    # One httpx client (one connection) per simulated client: httpcore's pool scans all its connections for
    # every request, so one shared 64-connection pool spent ~110 ms of client CPU per request and became the
    # bottleneck of the whole test (measured with cProfile).
    pool = [httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=httpx.Limits(max_connections=1))
            for _ in range(clients)]
    async with contextlib.AsyncExitStack() as stack:
        for c in pool:
            await stack.enter_async_context(c)
        client = pool[0]

        async def post(batch: list[str], who: int = 0) -> httpx.Response:
            return await pool[who].post("/v1/embeddings", json={"input": batch})

        # Warm-up: one request per client opens every connection and runs the engine's first calls.
        warm = await asyncio.gather(*(post(rng.sample(texts, min(texts_per_request, len(texts))), i)
                                      for i in range(clients)))
        for r in warm:
            r.raise_for_status()
        if dim is None:
            dim = len(warm[0].json()["data"][0]["embedding"])

        async def scrape() -> dict[str, float]:
            try:
                r = await client.get("/metrics")
                return batch_metrics(r.text) if r.status_code == 200 else {}
            except httpx.HTTPError:
                return {}  # not a bertkit server, or no metrics: the batch columns stay empty

        before = await scrape()
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        tokens = 0
        sent = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def one_client(who: int) -> None:
            nonlocal sent, tokens
            # One event loop: the check-and-increment of `sent` cannot interleave with another client's.
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                batch = [rng.choice(texts) for _ in range(texts_per_request)]
                start = time.perf_counter()
                try:
                    r = await post(batch, who)
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                elapsed = time.perf_counter() - start
                if r.status_code != 200:
                    errors[f"HTTP {r.status_code}"] += 1
                    continue
                try:
                    body = r.json()
                except ValueError:
                    errors["invalid JSON"] += 1
                    continue
                if not _shape_ok(body, len(batch), dim):
                    errors["wrong shape"] += 1
                    continue
                latencies.append(elapsed)
                tokens += int(body.get("usage", {}).get("total_tokens", 0))

        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
        after = await scrape()

    ok = len(latencies)
    lat = sorted(x * 1000 for x in latencies)
    calls = after.get("bertkit_batch_size_count", 0) - before.get("bertkit_batch_size_count", 0)
    batch_texts = after.get("bertkit_batch_size_sum", 0) - before.get("bertkit_batch_size_sum", 0)
    batch_tokens = after.get("bertkit_batch_tokens_sum", 0) - before.get("bertkit_batch_tokens_sum", 0)
    return {
        "requests": sent, "ok": ok, "errors": dict(errors), "seconds": wall,
        "stopped_by": "max_requests" if sent >= max_requests else "time",
        "requests_per_s": ok / wall, "texts_per_s": ok * texts_per_request / wall, "tokens_per_s": tokens / wall,
        "latency_ms": {"mean": sum(lat) / ok if ok else float("nan"), "p50": _percentile(lat, 50),
                       "p95": _percentile(lat, 95), "p99": _percentile(lat, 99), "max": lat[-1] if lat else 0.0},
        "engine_calls": int(calls) if after else None,
        "mean_batch_texts": batch_texts / calls if calls else None,
        "mean_batch_tokens": batch_tokens / calls if calls else None,
    }


def run_load(base_url: str, clients: int, seconds: float, max_requests: int, texts: list[str],
             texts_per_request: int = 1, **kw: Any) -> dict[str, Any]:
    """``run_load_async`` on a fresh event loop (for callers without one)."""
    return asyncio.run(run_load_async(base_url, clients, seconds, max_requests, texts, texts_per_request, **kw))


# ---- the server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: IO[bytes], n: int = 3000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-n:]


@contextlib.contextmanager
def server(serve_args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """``bertkit serve *serve_args`` on a free loopback port; yields its URL once /healthz answers, and stops it
    (SIGTERM, then kill) however the block ends."""
    with server_process(serve_args, env) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(serve_args: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``server`` that also yields the process (its pid, for memory readings); ``env`` adds to the environment."""
    port = free_port()
    cmd = [sys.executable, "-m", "bertkit.cli.main", "serve", *serve_args, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server never blocks on a full pipe
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode} before answering /healthz: "
                                       f"{' '.join(cmd)}\n{_tail(log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer /healthz within {STARTUP_TIMEOUT_S} s: "
                                       f"{' '.join(cmd)}\n{_tail(log)}")
                time.sleep(0.2)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                proc.kill()
                proc.wait()


# ---- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="built-in name or model directory (default all-MiniLM-L6-v2)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="the server's intra-op threads")
    p.add_argument("--dtype", default="fp32", help="the server's --dtype")
    p.add_argument("--int8", action="store_true", help="the server's --int8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 clients, 5 s (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "serve_load.json"))
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds = 8, 5.0
    # A SIGTERM to this script unwinds like Ctrl-C, so the server's `finally` still stops it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    texts = sample_sentences(seed=args.seed)
    engine = [*([args.model] if args.model else []), "--threads", str(args.threads), "--dtype", args.dtype,
              *(["--int8"] if args.int8 else [])]
    results = {}
    for name, flags in CONFIGS.items():
        with server([*engine, *flags]) as url:
            results[name] = run_load(url, args.clients, args.seconds, args.max_requests, texts,
                                     args.texts_per_request, seed=args.seed)
        print(f"{name}: {results[name]['requests_per_s']:.1f} req/s, errors {results[name]['errors']}",
              file=sys.stderr)
    report = {
        "benchmark": "serve_load",
        "model": args.model or "all-MiniLM-L6-v2",
        "clients": args.clients, "seconds": args.seconds, "max_requests": args.max_requests,
        "texts_per_request": args.texts_per_request, "threads": args.threads, "dtype": args.dtype,
        "int8": args.int8, "seed": args.seed,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "results": results,
        "texts_per_s_batching_vs_off": results["batching"]["texts_per_s"] / results["no-batching"]["texts_per_s"]
        if results["no-batching"]["texts_per_s"] else None,
    }
    if not args.quick:  # a smoke test never replaces the committed measurement
        write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    def num(x: float | None, fmt: str = ",.1f") -> str:
        return "–" if x is None else format(x, fmt)

    lines = [
        f"{report['model']}, {report['dtype']}{' int8' if report['int8'] else ''}, {report['threads']} server "
        f"threads; {report['clients']} clients, {report['seconds']:g} s or {report['max_requests']:,} requests, "
        f"{report['texts_per_request']} BBC sentence(s) per request.",
        "",
        "| config | requests | req/s | texts/s | tokens/s | p50 ms | p95 ms | p99 ms | max ms | texts/engine call "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["results"].items():
        lat = r["latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {name} | {r['requests']:,} | {r['requests_per_s']:,.1f} | {r['texts_per_s']:,.1f} "
                     f"| {r['tokens_per_s']:,.0f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} "
                     f"| {lat['max']:.1f} | {num(r['mean_batch_texts'], '.2f')} | {errors} |")
    ratio = report["texts_per_s_batching_vs_off"]
    lines += ["", f"texts/s, batching on / off: {num(ratio, '.2f')}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
