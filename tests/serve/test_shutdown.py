"""A real uvicorn server: chunked bodies over the limit are refused; shutdown lets an in-flight request finish
with 200 before the batcher's thread stops, and answers queued work it cannot finish with JSON 503s; half-sent
headers and silent connections are closed."""

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from bertkit.serve import ServerConfig, create_app
from bertkit.serve.server import drain_on_signals, server_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_graceful_shutdown_finishes_in_flight_request(services, monkeypatch):
    service = services["encoder"]
    started = threading.Event()
    embed = service.embed

    def slow_embed(texts, normalize, **kwargs):
        started.set()
        time.sleep(1.0)
        return embed(texts, normalize, **kwargs)
    monkeypatch.setattr(service, "embed", slow_embed)

    app = create_app(service, ServerConfig(max_body_bytes=2048))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)

    def chunks():
        for _ in range(8):
            yield b"x" * 512
    assert httpx.post(f"{url}/v1/embeddings", content=chunks()).status_code == 413  # chunked, no Content-Length
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"

    result = {}

    def call():
        result["response"] = httpx.post(f"{url}/v1/embeddings", json={"input": ["in flight"]}, timeout=30)
    caller = threading.Thread(target=call)
    caller.start()
    assert started.wait(10)
    server.should_exit = True  # what uvicorn's SIGTERM handler does
    caller.join(30)
    thread.join(30)
    assert not thread.is_alive()
    r = result["response"]
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == service.hidden_size
    batcher = app.state.batchers["embeddings"]
    assert batcher._thread is not None and not batcher._thread.is_alive()  # lifespan shutdown drained it


# ---- issue 15, finding 7: shutdown with queued work -------------------------------------------------------------
def start(app, **config):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info",
                                           **server_options(app), **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}", port


def test_shutdown_with_queued_work_answers_json_503s_and_logs_no_traceback(services, monkeypatch, caplog):
    """Before: SIGTERM with ~40 s of queued work gave plain-text 'Internal Server Error' 500s and ERROR
    tracebacks (uvicorn cancelled the requests at its deadline). Now queued work runs for the grace period and
    the rest is answered with the API's JSON 503 at once; nothing is cancelled, nothing logged as an error."""
    service = services["encoder"]
    embed = service.embed

    def slow_embed(texts, normalize, **kwargs):
        time.sleep(0.4)
        return embed(texts, normalize, **kwargs)
    monkeypatch.setattr(service, "embed", slow_embed)
    app = create_app(service, ServerConfig(batching=False, shutdown_grace_s=1.0))  # 12 x 0.4 s of queued work
    server, thread, url, _ = start(app)
    caplog.set_level(logging.INFO)

    async def clients():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            calls = [asyncio.ensure_future(c.post("/v1/embeddings", json={"input": [f"text {i}"]})) for i in range(12)]
            await asyncio.sleep(0.6)  # all queued, one running
            t0 = time.monotonic()
            app.state.begin_shutdown()  # what SIGTERM does first (drain_on_signals), then:
            server.should_exit = True
            responses = await asyncio.gather(*calls, return_exceptions=True)
            return responses, time.monotonic() - t0

    responses, waited = asyncio.run(clients())
    thread.join(30)
    assert not thread.is_alive()
    assert waited < 5  # the grace period (1 s) and one running call, not the 5 s of queued work
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    for r in responses:
        if r.status_code == 503:
            err = r.json()["error"]
            assert err["code"] == "shutting_down" and err["type"] == "server_error" and "grace period" in err["message"]
        else:
            assert r.status_code == 200 and len(r.json()["data"]) == 1
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, [rec.getMessage() for rec in errors]
    assert "Traceback" not in caplog.text and "Cancel" not in caplog.text


def test_drain_on_signals_chains_the_servers_handler():
    calls = []

    def server_handler(signum, frame):
        calls.append(("server", signum))
    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        restore = drain_on_signals(lambda: calls.append(("drain", None)))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert calls == [("drain", None), ("server", signal.SIGTERM)]  # the app hears of it first
        restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigterm_to_bertkit_serve_with_queued_work(tiny_dir, tmp_path):
    """The real thing: `bertkit serve` in a process of its own, a slowed engine, SIGTERM under load."""
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, time\n"
        "from bertkit.serve.service import Service\n"
        "embed = Service.embed\n"
        "def slow(self, *a, **k):\n    time.sleep(0.4)\n    return embed(self, *a, **k)\n"
        "Service.embed = slow\n"
        "from bertkit.cli.main import main\n"
        f"sys.exit(main(['serve', {str(tiny_dir)!r}, '--port', '{port}', '--no-batching', '--shutdown-grace', '1',"
        " '--threads', '1']))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)

        async def clients():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                calls = [asyncio.ensure_future(c.post("/v1/embeddings", json={"input": [f"t{i}"]})) for i in range(12)]
                await asyncio.sleep(0.8)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*calls, return_exceptions=True)
        responses = asyncio.run(clients())
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the SIGTERM it handled
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    assert all(json.loads(r.text)["error"]["code"] == "shutting_down" for r in responses if r.status_code == 503)
    assert "Traceback" not in out and "ERROR" not in out, out


# ---- issue 15, finding 8: header and idle deadlines ---------------------------------------------------------------
def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_half_sent_headers_and_silent_connections_are_closed(services):
    app = create_app(services["encoder"], ServerConfig(header_timeout_s=0.5, keep_alive_s=1))
    server, thread, url, port = start(app)
    try:
        for partial in (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: appl", b""):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(partial)
                t0 = time.monotonic()
                data = read_all(s, 10)
                assert time.monotonic() - t0 < 5  # before: open for as long as the client liked
            assert data.startswith(b"HTTP/1.1 408") and b'"code":"header_timeout"' in data, data
        with httpx.Client(base_url=url) as c:  # whole requests are unaffected, on a reused connection too
            assert c.post("/v1/embeddings", json={"input": "a"}).status_code == 200
            time.sleep(0.8)  # longer than the header deadline, shorter than keep-alive: not cut
            assert c.post("/v1/embeddings", json={"input": "b"}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
