"""A real uvicorn server: chunked bodies over the limit are refused, and shutdown lets an in-flight request
finish with 200 before the batcher's thread stops."""

import socket
import threading
import time

import httpx
import uvicorn

from bertkit.serve import ServerConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_graceful_shutdown_finishes_in_flight_request(services, monkeypatch):
    service = services["encoder"]
    started = threading.Event()
    embed = service.embed

    def slow_embed(texts, normalize):
        started.set()
        time.sleep(1.0)
        return embed(texts, normalize)
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
