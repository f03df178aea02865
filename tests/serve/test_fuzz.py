"""Random JSON bodies to every POST endpoint: never a 500, errors keep their shape, the server stays healthy."""

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENDPOINTS = ("/v1/embeddings", "/v1/classify", "/v1/ner", "/v1/fill-mask")
FIELDS = ("input", "text_pair", "top_k", "truncate", "normalize", "encoding_format", "dimensions", "model", "user")

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["[MASK]", "a [MASK] b", "base64", "float", "", " "]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
bodies = (st.dictionaries(st.sampled_from(FIELDS), values, max_size=4)  # plausible fields, random values
          | st.fixed_dictionaries({"input": st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4)
                                   | st.text(max_size=40)}, optional={"top_k": st.integers(-3, 60),
                                                                      "truncate": st.booleans()})
          | values)  # anything at all


@pytest.fixture(scope="module", params=["mlm", "classification", "ner"])
def client(request, services, make_app):
    with TestClient(make_app(services[request.param])) as c:
        yield c


@pytest.mark.parametrize("path", ENDPOINTS)
def test_random_bodies_never_500(client, path):
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=bodies)
    def check(body):
        r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code < 500, r.text
        if r.status_code != 200:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]

    check()
    assert client.get("/healthz").status_code == 200
