"""The server on Ray Serve: 2 replicas on the session's local Ray instance answer what the in-process server answers
(embeddings, classify, health, errors), both take requests; an unreachable --ray-address fails fast; the CLI wiring.

One deployment for the module (each replica is a Ray worker process that imports torch and loads the model: ~30 s
on 2 cores); the replicas reserve 0.5 CPU each so that both fit the fixture's 2 CPUs next to Serve's own actors.
"""

import base64
import concurrent.futures
import socket
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bertkit.cli import serve as serve_cli
from bertkit.cli.main import main
from bertkit.distributed import ray_cluster
from bertkit.errors import BertkitError
from bertkit.serve import ServerConfig, ray_serve

TEXTS = ["the cat sat on the mat", "a longer sentence about rivers and mountains in the north", "hi"]
CONFIG = {"max_texts_per_request": 8, "max_body_bytes": 4096}
APP = "bertkit-test"

# (method, path, body): what the single-server tests check, each answered by a replica and by the app in-process
REQUESTS = [
    ("GET", "/healthz", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"input": TEXTS}),
    ("POST", "/v1/embeddings", {"input": TEXTS[0], "normalize": False}),
    ("POST", "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"}),
    ("POST", "/v1/classify", {"input": TEXTS}),
    ("POST", "/v1/classify", {"input": TEXTS[0], "text_pair": "and a second text"}),
    # errors: the same status and the same body, to the byte
    ("POST", "/v1/embeddings", {"input": ""}),
    ("POST", "/v1/embeddings", {"input": ["a", {"b": 1}]}),
    ("POST", "/v1/embeddings", {"input": ["a"] * 9}),
    ("POST", "/v1/embeddings", {"input": "x" * 5000}),
    ("POST", "/v1/embeddings", b"{nope"),
    ("POST", "/v1/embeddings", {"input": "a", "model": "some-other-model"}),
    ("POST", "/v1/classify", {"input": TEXTS, "text_pair": ["x"]}),
    ("POST", "/v1/ner", {"input": "a"}),
    ("GET", "/nope", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(client, method, path, body):
    if isinstance(body, bytes):
        return client.request(method, path, content=body, headers={"content-type": "application/json"})
    return client.request(method, path, json=body)


@pytest.fixture(scope="module")
def service(services):
    return services["classification"]  # a tiny task model: embeddings and classify


@pytest.fixture(scope="module")
def ray_url(ray_local, service):
    """2 replicas of the classifier behind Ray Serve's proxy on a free port; deleted (and Serve shut down) after."""
    port = free_port()
    app = ray_serve.deployment(service.name, replicas=2, num_cpus=0.5, config=ServerConfig(**CONFIG), name=APP)
    try:
        ray_serve.start(app, port=port, name=APP)
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.stop(APP)


@pytest.mark.slow  # 2 replicas starting on 2 cores: ~60 s (make test-slow; CI runs it)
def test_replicas_answer_as_the_single_server(ray_url, service, make_app):
    with httpx.Client(base_url=ray_url, timeout=60) as remote, TestClient(make_app(service, **CONFIG)) as local:
        for method, path, body in REQUESTS:
            got, want = send(remote, method, path, body), send(local, method, path, body)
            where = f"{method} {path} {body!r:.60}"
            assert got.status_code == want.status_code, f"{where}: {got.text}"
            assert got.headers[ray_serve.REPLICA_HEADER], where
            g, w = got.json(), want.json()
            if got.status_code != 200 or path in ("/healthz", "/v1/models"):
                assert g == w, where  # errors: the same message, param and code
            elif path == "/v1/embeddings":
                assert (g["model"], g["usage"], len(g["data"])) == (w["model"], w["usage"], len(w["data"]))
                for a, b in zip(g["data"], w["data"], strict=True):
                    if isinstance(a["embedding"], str):  # base64 little-endian float32
                        a, b = (np.frombuffer(base64.b64decode(x["embedding"]), "<f4") for x in (a, b))
                        np.testing.assert_allclose(a, b, atol=1e-5)
                    else:
                        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
            else:  # classify
                assert g["usage"] == w["usage"] and [d["label"] for d in g["data"]] == [d["label"] for d in w["data"]]
                for a, b in zip(g["data"], w["data"], strict=True):
                    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
        assert remote.get("/metrics").status_code == 200 and remote.get("/docs").status_code == 200


@pytest.mark.slow  # 2 replicas starting on 2 cores: ~60 s (make test-slow; CI runs it)
def test_both_replicas_answer(ray_url):
    """Concurrent requests spread over the replicas (each names itself in X-Bertkit-Replica)."""
    def embed(i: int) -> str:
        r = httpx.post(f"{ray_url}/v1/embeddings", json={"input": f"text number {i}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers[ray_serve.REPLICA_HEADER]
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for start in range(0, 64, 16):  # Ray's router picks at random between the less busy: a few rounds at most
            seen |= set(pool.map(embed, range(start, start + 16)))
            if len(seen) == 2:
                break
    assert len(seen) == 2, seen


# ---- no Ray needed ---------------------------------------------------------------------------------
def test_unreachable_address_fails_fast(tiny_dir, capsys):
    closed = free_port()  # nothing listens there any more: refused at once
    t0 = time.perf_counter()
    with pytest.raises(BertkitError, match=f"no Ray cluster at 127.0.0.1:{closed}"):
        ray_cluster.check_address(f"127.0.0.1:{closed}")
    with pytest.raises(BertkitError, match=r"no Ray cluster at no-such-host\.invalid "):  # not resolved
        ray_cluster.check_address("no-such-host.invalid", timeout_s=0.5)
    assert main(["serve", str(tiny_dir), "--ray", "--ray-address", f"ray://127.0.0.1:{closed}"]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster at ray://127.0.0.1:{closed}" in err and "ray start --head" in err
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(("address", "endpoint"), [
    ("head:6379", ("head", 6379)), ("10.0.0.1", ("10.0.0.1", 6379)), ("ray://head:10001", ("head", 10001)),
    ("[::1]:7000", ("::1", 7000)), ("[::1]", ("::1", 6379)), ("auto", None), ("local", None),
])
def test_gcs_endpoint(address, endpoint):
    assert ray_cluster.gcs_endpoint(address) == endpoint


def test_bad_address_and_flags(tiny_dir, capsys):
    with pytest.raises(BertkitError, match="is not HOST:PORT"):
        ray_cluster.gcs_endpoint("head:port")
    assert main(["serve", str(tiny_dir), "--replicas", "2"]) == 2
    assert "add --ray" in capsys.readouterr().err
    assert main(["serve", str(tiny_dir), "--ray", "--replicas", "0"]) == 2
    assert "--replicas must be >= 1" in capsys.readouterr().err


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(BertkitError, match=r"pip install 'bertkit\[ray\]'"):
        ray_serve.deployment("all-MiniLM-L6-v2")


def test_cli_wiring(tiny_dir, monkeypatch):
    """`serve --ray` passes its flags to the deployment and Serve, waits for a signal, then stops (Ray stubbed)."""
    seen = {}
    monkeypatch.setattr(ray_cluster, "connect", lambda address: seen.update(address=address) or True)
    monkeypatch.setattr(ray_serve, "check_capacity", lambda *a: seen.update(capacity=a))
    monkeypatch.setattr(ray_serve, "deployment", lambda model, **kw: seen.update(model=model, **kw) or "app")
    monkeypatch.setattr(ray_serve, "start", lambda app, **kw: seen.update(app=app, start=kw))
    monkeypatch.setattr(ray_serve, "stop", lambda: seen.update(stopped=True))
    monkeypatch.setattr(serve_cli, "wait_for_stop", lambda: seen.update(waited=True))
    assert main(["serve", str(tiny_dir), "--ray", "--replicas", "3", "--threads", "2", "--ray-address", "head:6379",
                 "--port", "9123", "--max-texts", "7", "--keep-alive", "4"]) == 0
    assert (seen["address"], seen["capacity"], seen["model"], seen["replicas"]) == \
        ("head:6379", (3, 2, False), str(tiny_dir), 3)  # a cluster: not local
    assert seen["options"].threads == 2 and seen["config"].max_texts_per_request == 7
    assert seen["start"] == {"host": "127.0.0.1", "port": 9123, "keep_alive_s": 4}
    assert seen["waited"] and seen["stopped"]
