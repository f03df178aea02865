"""Every endpoint through TestClient: shapes, parity with the library calls, and the error cases."""

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bertkit.serve import ServerConfig, create_app, load_service

TEXTS = ["the cat sat on the mat", "a longer sentence about rivers and mountains in the north", "hi"]


@pytest.fixture(scope="module")
def encoder_client(services, make_app):
    with TestClient(make_app(services["encoder"])) as client:
        yield client


def post(client, path, body, status=200):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def assert_error(body, status_type="invalid_request_error"):
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type and body["error"]["message"]
    return body["error"]


# ---- embeddings ----------------------------------------------------------------------------------
def test_embeddings_match_encoder(encoder_client, services):
    enc = services["encoder"].encoder
    out = post(encoder_client, "/v1/embeddings", {"input": TEXTS, "model": services["encoder"].name, "user": "u1"})
    assert out["object"] == "list" and out["model"] == services["encoder"].name
    assert [d["index"] for d in out["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in out["data"])
    got = np.array([d["embedding"] for d in out["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, enc.embed(TEXTS), atol=1e-5)
    n_tokens = sum(len(ids) for ids in enc.tokenize(TEXTS).ids)
    assert out["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}

    raw = post(encoder_client, "/v1/embeddings", {"input": TEXTS[0], "normalize": False,
                                                   "dimensions": enc.hidden_size})
    assert len(raw["data"]) == 1
    np.testing.assert_allclose(raw["data"][0]["embedding"], enc.embed(TEXTS[:1], normalize=False)[0], atol=1e-5)


def test_embeddings_base64_is_little_endian_float32(encoder_client, services):
    out = post(encoder_client, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in out["data"]])
    np.testing.assert_allclose(got, services["encoder"].encoder.embed(TEXTS), atol=1e-5)


def test_default_model_is_minilm(minilm):
    service = load_service(None)
    assert service.name == "all-MiniLM-L6-v2" and service.capabilities == ["embeddings"]
    with TestClient(create_app(service)) as client:
        out = post(client, "/v1/embeddings", {"input": TEXTS[:2]})
    np.testing.assert_allclose([d["embedding"] for d in out["data"]], minilm.embed(TEXTS[:2]), atol=1e-5)


def test_truncate(encoder_client, services):
    limit = services["encoder"].max_length
    long = "word " * (limit + 10)
    assert len(post(encoder_client, "/v1/embeddings", {"input": ["short", long]})["data"]) == 2  # truncated
    err = assert_error(post(encoder_client, "/v1/embeddings", {"input": ["short", long], "truncate": False}, 422))
    assert err["param"] == "input[1]" and f"has {limit + 12} tokens" in err["message"]
    assert err["code"] == "text_too_long" and str(limit) in err["message"]


# ---- classify / ner / fill-mask ------------------------------------------------------------------
def test_classify(services, make_app):
    service = services["classification"]
    with TestClient(make_app(service)) as client:
        out = post(client, "/v1/classify", {"input": TEXTS})
        one = post(client, "/v1/classify", {"input": TEXTS[0], "text_pair": "and a second text"})
        err = assert_error(post(client, "/v1/classify", {"input": TEXTS, "text_pair": ["x"]}, 422))
        emb = post(client, "/v1/embeddings", {"input": TEXTS})  # a task model also embeds, with its own encoder
    assert service.capabilities == ["embeddings", "classify"] and err["param"] == "text_pair"
    want = service.task_model.predict(TEXTS)
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, w in zip(out["data"], want, strict=True):
        assert d["label"] == w["label"] and d["label"] in ["neg", "neu", "pos"]
        assert d["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
        assert sum(d["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert one["data"][0]["label"] == service.task_model.predict(TEXTS[:1], ["and a second text"])[0]["label"]
    assert service.encoder.model is service.task_model.head.encoder  # weights loaded once
    np.testing.assert_allclose([d["embedding"] for d in emb["data"]], service.encoder.embed(TEXTS), atol=1e-5)


def test_regression_scores(services, make_app):
    with TestClient(make_app(services["regression"])) as client:
        out = post(client, "/v1/classify", {"input": TEXTS})
    want = services["regression"].task_model.predict(TEXTS)
    assert [d["score"] for d in out["data"]] == pytest.approx([w["score"] for w in want], abs=1e-5)


def test_ner(services, make_app):
    service = services["ner"]
    words = [["John", "lives", "in", "Paris"], ["hello", "world"]]
    with TestClient(make_app(service)) as client:
        out = post(client, "/v1/ner", {"input": words})
        text = post(client, "/v1/ner", {"input": "John lives in Paris"})
        err = assert_error(post(client, "/v1/ner", {"input": ["a b", "   "]}, 422))
        unsupported = assert_error(post(client, "/v1/classify", {"input": "x"}, 400))
    assert service.capabilities == ["embeddings", "ner"] and err["message"] == "input[1] has no words"
    assert "/v1/ner" in unsupported["message"] and unsupported["code"] == "unsupported_endpoint"
    want = service.task_model.predict(words)
    for d, w in zip(out["data"], want, strict=True):
        assert d["words"] == w["words"] and d["tags"] == w["tags"] and d["entities"] == w["entities"]
        assert set(d["tags"]) <= {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}
    assert text["data"][0]["tags"] == out["data"][0]["tags"]


def test_fill_mask(services, make_app):
    service = services["mlm"]
    texts = ["the capital of france is [MASK] .", "a [MASK] b [MASK] c"]
    with TestClient(make_app(service)) as client:
        out = post(client, "/v1/fill-mask", {"input": texts, "top_k": 3})
        err = assert_error(post(client, "/v1/fill-mask", {"input": ["a [MASK]", "no mask here"]}, 422))
        for k in (0, 51, 2.0, "3", True):
            assert_error(post(client, "/v1/fill-mask", {"input": texts, "top_k": k}, 422))
    assert service.capabilities == ["embeddings", "fill-mask"] and "text 1 has no [MASK]" in err["message"]
    want = service.fill_mask(texts, top_k=3)
    assert [len(d["predictions"]) for d in out["data"]] == [1, 2]
    for d, w in zip(out["data"], want, strict=True):
        for mask, mask_want in zip(d["predictions"], w, strict=True):
            assert [p["token_id"] for p in mask] == [p["token_id"] for p in mask_want] and len(mask) == 3
            assert [p["score"] for p in mask] == pytest.approx([p["score"] for p in mask_want], rel=1e-4)
            assert all(set(p) == {"token", "token_id", "score", "sequence"} for p in mask)


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/fill-mask", {"input": "a [MASK]"}, "has no trained MLM head"),
    ("/v1/classify", {"input": "a"}, "has no sequence-classification head"),
    ("/v1/ner", {"input": "a"}, "has no token-classification (ner) head"),
])
def test_unsupported_endpoint_is_400(encoder_client, path, body, reason):
    err = assert_error(post(encoder_client, path, body, 400))
    assert reason in err["message"] and err["code"] == "unsupported_endpoint"


# ---- limits and bad input ------------------------------------------------------------------------
def test_too_many_texts_is_413(encoder_client):
    err = assert_error(post(encoder_client, "/v1/embeddings", {"input": ["a"] * 9}, 413))
    assert "9 inputs" in err["message"] and "at most 8" in err["message"]


def test_big_body_is_413_with_content_length_and_chunked(encoder_client):
    big = b'{"input": "' + b"a" * 5000 + b'"}'
    r = encoder_client.post("/v1/embeddings", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and assert_error(r.json())["code"] == "request_too_large"

    def chunks():  # no Content-Length: the body is counted as it streams in
        yield b'{"input": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'
    r = encoder_client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
    small = encoder_client.post("/v1/embeddings", content=iter([b'{"input": ', b'"ok"}']),
                                headers={"content-type": "application/json"})
    assert small.status_code == 200


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({}, "input", "Field required"),
    ({"input": []}, "input", "non-empty"),
    ({"input": ""}, "input", "empty string"),
    ({"input": ["a", ""]}, "input", "input[1] is an empty string"),
    ({"input": 5}, "input", "non-empty string"),
    ({"input": [101, 2023]}, "input", "only strings"),
    ({"input": ["a", {"b": 1}]}, "input", "input[1] is dict"),
    ({"input": [["a"]]}, "input", "input[0] is list"),
    (b'{"input": ["a", "b\\ud800"]}', "input", "input[1] is not valid unicode"),
    ({"input": "a", "normalize": "yes"}, "normalize", "valid boolean"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "float"),
    ({"input": "a", "dimensions": 7}, "dimensions", "dimensions must be 32"),
    ({"input": "a", "typo": 1}, "typo", "Extra inputs"),
    ([1, 2], None, "dictionary"),
])
def test_bad_input_is_422(encoder_client, body, param, needle):
    err = assert_error(post(encoder_client, "/v1/embeddings", body, 422))
    assert err["param"] == param and needle in err["message"]


def test_not_json_and_unknown_paths(encoder_client):
    r = encoder_client.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in assert_error(r.json())["message"]  # as every bad body
    r = encoder_client.post("/v1/embeddings", content=b"[" * 1500 + b"]" * 1500,
                            headers={"content-type": "application/json"})
    assert r.status_code == 400 and assert_error(r.json())  # too deeply nested for the JSON parser
    assert encoder_client.get("/nope").status_code == 404 and assert_error(encoder_client.get("/nope").json())
    assert encoder_client.get("/v1/embeddings").status_code == 405


def test_unexpected_error_is_500_without_traceback(services, monkeypatch, caplog):
    service = services["encoder"]

    def broken(texts, normalize, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(service, "embed", broken)
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert assert_error(r.json(), "server_error")["message"] == "internal server error"
    assert "secret internals" in caplog.text  # logged server-side


# ---- health and metrics --------------------------------------------------------------------------
def test_healthz_and_metrics(services, make_app):
    with TestClient(make_app(services["mlm"])) as client:
        assert client.get("/healthz").json() == {"status": "ok", "model": services["mlm"].name,
                                                 "capabilities": ["embeddings", "fill-mask"]}
        post(client, "/v1/embeddings", {"input": TEXTS})
        post(client, "/v1/embeddings", {"input": ""}, 422)
        text = client.get("/metrics").text
        assert client.get("/docs").status_code == 200 and "/v1/fill-mask" in client.get("/openapi.json").json()["paths"]
    for name in ("bertkit_requests_total", "bertkit_batch_size_bucket", "bertkit_batch_tokens_bucket",
                 "bertkit_queue_wait_seconds_bucket", "bertkit_request_latency_seconds_bucket",
                 "bertkit_inflight_requests"):
        assert name in text
    assert 'bertkit_requests_total{endpoint="/v1/embeddings",status="200"} 1.0' in text
    assert 'bertkit_requests_total{endpoint="/v1/embeddings",status="422"} 1.0' in text
    assert 'bertkit_batch_size_count{capability="embeddings"} 1.0' in text


def test_server_config_defaults():
    c = ServerConfig()
    assert (c.max_texts_per_request, c.max_body_bytes, c.batching) == (256, 1 << 20, True)


# ---- the onnx backend -----------------------------------------------------------------------------
def test_onnx_backend_serves_the_same_results(tmp_path, services, make_app, tiny_dir):
    """`serve --backend onnx` on an exported classifier: embeddings and classify equal torch's to 1e-4."""
    from bertkit.inference.engine import EngineOptions
    from bertkit.inference.onnx import export_onnx
    from tests.serve.conftest import save_task_model

    exported = export_onnx(save_task_model(tmp_path / "task", tiny_dir, "classification"), tmp_path / "onnx")
    onnx_service = load_service(str(exported), EngineOptions(backend="onnx"))
    torch_service = load_service(str(exported))
    assert onnx_service.encoder.onnx is not None and onnx_service.task_model.onnx is not None
    with TestClient(make_app(onnx_service)) as a, TestClient(make_app(torch_service)) as b:
        for path in ("/v1/embeddings", "/v1/classify"):
            got, want = post(a, path, {"input": TEXTS}), post(b, path, {"input": TEXTS})
            for g, w in zip(got["data"], want["data"], strict=True):
                if path == "/v1/embeddings":
                    np.testing.assert_allclose(g["embedding"], w["embedding"], atol=1e-4)
                else:
                    assert g["label"] == w["label"]
                    np.testing.assert_allclose(list(g["probabilities"].values()),
                                               list(w["probabilities"].values()), atol=1e-4)
