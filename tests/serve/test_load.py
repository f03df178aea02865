"""A short bounded load test: ``benchmarks/serve_load.run_load`` against a real uvicorn server (in a thread,
tiny model) returns only correct responses, and concurrent requests share engine calls when batching is on."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import uvicorn

from bertkit.serve import ServerConfig, create_app

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def serve_load() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `workers` as a top-level module
    try:
        return importlib.import_module("serve_load")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def texts(serve_load) -> list[str]:
    return serve_load.sample_sentences(500)


@contextmanager
def running(app, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_load_with_batching_merges_requests(services, serve_load, texts):
    service = services["encoder"]
    with running(create_app(service, ServerConfig()), serve_load.free_port()) as url:
        r = serve_load.run_load(url, clients=16, seconds=2.0, max_requests=5000, texts=texts, texts_per_request=2,
                                dim=service.hidden_size)
    assert r["errors"] == {} and r["requests"] == r["ok"] > 0
    assert r["tokens_per_s"] > 0 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
    assert r["engine_calls"] < r["requests"] and r["mean_batch_texts"] > 2  # merged: more than one request a call


def test_load_without_batching_stops_at_the_request_cap(services, serve_load, texts):
    service = services["encoder"]
    with running(create_app(service, ServerConfig(batching=False)), serve_load.free_port()) as url:
        r = serve_load.run_load(url, clients=16, seconds=30.0, max_requests=200, texts=texts, texts_per_request=2)
    assert r["errors"] == {} and r["requests"] == r["ok"] == 200 and r["stopped_by"] == "max_requests"
    assert r["engine_calls"] == 200 and r["mean_batch_texts"] == 2  # one request per engine call
