"""Issue 15, finding 8 (server): the API key, one consistent answer for every kind of bad JSON, the
Content-Type, the model name, an OpenAPI document that states what the server enforces, /docs without a CDN,
and the body deadline."""

import asyncio
import re

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serve.test_app import assert_error

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def client(services, make_app):
    with TestClient(make_app(services["encoder"])) as c:
        yield c


# ---- authentication --------------------------------------------------------------------------------------------
def test_api_key(services, make_app):
    with TestClient(make_app(services["encoder"], api_key=KEY)) as c:
        body = {"input": "hello"}
        missing = c.post("/v1/embeddings", json=body)
        wrong = c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
        basic = c.post("/v1/embeddings", json=body, headers={"Authorization": "Basic czNjcmV0"})
        ok = c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        for r, needle in ((missing, "no API key given"), (wrong, "incorrect API key"), (basic, "must be 'Bearer")):
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            err = assert_error(r.json())
            assert err["code"] == "invalid_api_key" and needle in err["message"]
        # open by default: health, metrics and the docs; everything else needs the key
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
        assert c.get("/v1/models").status_code == 401
        big = c.post("/v1/embeddings", content=b"x" * 10_000, headers={"content-type": "application/json"})
        assert big.status_code == 401  # refused before its body is read
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/v1/embeddings"]["post"]["security"] == [{"bearer": []}]
        assert "401" in schema["paths"]["/v1/embeddings"]["post"]["responses"]
    with TestClient(make_app(services["encoder"], api_key=KEY, open_paths=())) as c:
        assert c.get("/healthz").status_code == 401 and c.get("/metrics").status_code == 401


# ---- bad bodies: one answer, with the reason -------------------------------------------------------------------
@pytest.mark.parametrize(("body", "needle"), [
    (b"{nope", "not valid JSON (Expecting property name"),
    (b'{"input": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at offset 14)"),
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (b"", "the request body is empty"),
    (b'{"input": "a"} trailing', "not valid JSON (Extra data"),
])
def test_every_bad_json_body_is_400_with_its_reason(client, body, needle):
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = assert_error(r.json())
    assert err["code"] == "invalid_json" and needle in err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_says_so(client, content_type):
    r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": content_type})
    assert r.status_code == 415
    err = assert_error(r.json())
    assert err["code"] == "unsupported_media_type" and content_type in err["message"]
    assert "application/json" in err["message"]
    ok = client.post("/v1/embeddings", content=b'{"input": "a"}',
                     headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


# ---- the model field -------------------------------------------------------------------------------------------
def test_unknown_model_is_404_in_openais_shape(services, client, make_app):
    name = services["encoder"].name
    r = client.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"})
    assert r.status_code == 404
    err = assert_error(r.json())
    assert err["code"] == "model_not_found" and err["param"] == "model" and name in err["message"]
    for model in (name, name.rstrip("/").rsplit("/", 1)[-1], f"someorg/{name.rsplit('/', 1)[-1]}"):
        assert client.post("/v1/embeddings", json={"input": "a", "model": model}).status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == name
    with TestClient(make_app(services["encoder"], accept_any_model=True)) as c:
        assert c.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"}).status_code == 200


# ---- the OpenAPI document --------------------------------------------------------------------------------------
def test_openapi_states_the_enforced_limits(client):
    schema = client.get("/openapi.json").json()
    emb = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    string, array = emb["input"]["anyOf"]
    assert string == {"type": "string", "minLength": 1}
    assert array["minItems"] == 1 and array["maxItems"] == 8 and array["items"]["minLength"] == 1  # make_app: 8
    assert emb["dimensions"]["anyOf"][0]["enum"] == [32]
    ner = schema["components"]["schemas"]["NerRequest"]["properties"]["input"]["anyOf"]
    assert ner[0]["pattern"] == r"\S" and ner[2]["items"]["minItems"] == 1 and "maxItems" not in ner[2]["items"]
    fill = schema["components"]["schemas"]["FillMaskRequest"]["properties"]["input"]["anyOf"]
    assert fill[0]["pattern"] == r"\[MASK\]"
    responses = schema["paths"]["/v1/embeddings"]["post"]["responses"]
    assert {"200", "400", "404", "408", "413", "415", "422", "503"} <= set(responses)
    assert all(responses[c]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
               for c in responses if c != "200")
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # a body the server never sends
    assert "Retry-After" in responses["503"]["headers"]


# ---- /docs without a CDN ---------------------------------------------------------------------------------------
def test_docs_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
    for u in urls:
        assert client.get(u).status_code == 200, u
    assert client.get("/redoc").status_code == 404  # redoc needs a CDN: off


def test_docs_off_without_the_ui_files(services, make_app, monkeypatch, caplog):
    import bertkit.serve.docs

    monkeypatch.setattr(bertkit.serve.docs, "swagger_ui_dir", lambda: None)
    with TestClient(make_app(services["encoder"])) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 200
    assert "/docs is off" in caplog.text


# ---- the body deadline ----------------------------------------------------------------------------------------
def test_a_body_that_never_finishes_is_408(services, make_app):
    app = make_app(services["encoder"], body_timeout_s=0.3)

    async def main():
        sent = []

        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": b'{"input": ', "more_body": True}
            await asyncio.sleep(30)  # the rest never comes

        messages = []

        async def send(message):
            messages.append(message)
        scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": [
            (b"content-type", b"application/json")], "query_string": b"", "http_version": "1.1",
            "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": "", "raw_path": b"/"}
        await asyncio.wait_for(app(scope, receive, send), 10)
        return messages

    messages = asyncio.run(main())
    assert messages[0]["status"] == 408
    assert b'"code":"body_timeout"' in messages[1]["body"]


def test_limits_flow_to_httpx_clients(services, make_app):
    """The same 400 through a real ASGI client stack (no TestClient shortcuts)."""
    app = make_app(services["encoder"])

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/embeddings", content=b"\xff\xfe", headers={"content-type": "application/json"})
    r = asyncio.run(main())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
