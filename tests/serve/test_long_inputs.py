"""``bertkit serve --long-inputs chunk``: the endpoints read every window, and the token budget counts them."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bertkit.cli.main import build_parser
from bertkit.data.windows import window_spans
from bertkit.serve import load_service
from tests.serve.conftest import save_task_model

LONG = " ".join(["the central bank raised interest rates again and stocks fell"] * 30)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("long")
    return {"encoder": load_service(str(tiny_dir), long_inputs="chunk", stride=8),
            "classification": load_service(str(save_task_model(d / "cls", tiny_dir, "classification")),
                                           long_inputs="chunk", stride=8, window_pooling="max"),
            "ner": load_service(str(save_task_model(d / "ner", tiny_dir, "ner")), long_inputs="chunk", stride=8)}


def test_endpoints_read_long_inputs_in_windows(chunked, make_app):
    enc = chunked["encoder"].encoder
    n = len(enc.tokenizer.encode_plain([LONG])[0])
    with TestClient(make_app(chunked["encoder"], max_request_tokens=10_000)) as client:
        r = client.post("/v1/embeddings", json={"input": ["hi", LONG], "truncate": False})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
        np.testing.assert_allclose(got, enc.embed(["hi", LONG], long_inputs="chunk", stride=8), atol=1e-6)
        spans = window_spans(n, enc.max_length - 2, 8)
        assert len(spans) > 1
        assert r.json()["usage"]["prompt_tokens"] == 3 + sum(e - s + 2 for s, e in spans)  # every window's tokens
    # the untruncated text fits the budget, its windows (the overlaps read twice) do not
    with TestClient(make_app(chunked["encoder"], max_request_tokens=n + 2)) as client:
        r = client.post("/v1/embeddings", json={"input": LONG})
        assert r.status_code == 413 and "in all its windows" in r.json()["error"]["message"]
    tm = chunked["classification"].task_model
    with TestClient(make_app(chunked["classification"], max_request_tokens=10_000)) as client:
        r = client.post("/v1/classify", json={"input": [LONG]})
        assert r.status_code == 200, r.text
        want = tm.predict([LONG], long_inputs="chunk", stride=8, window_pooling="max")[0]
        assert r.json()["data"][0]["label"] == want["label"]
        assert r.json()["data"][0]["probabilities"] == pytest.approx(want["probabilities"])
    tm = chunked["ner"].task_model
    with TestClient(make_app(chunked["ner"], max_request_tokens=10_000)) as client:
        r = client.post("/v1/ner", json={"input": [LONG]})
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["tags"] == tm.predict([LONG], long_inputs="chunk", stride=8)[0]["tags"]
        assert len(r.json()["data"][0]["tags"]) == len(LONG.split())
        r = client.post("/v1/ner", json={"input": [LONG], "aggregation_strategy": "none"})  # raw text, in windows
        assert r.status_code == 200, r.text
        want = tm.predict([LONG], aggregation_strategy="none", long_inputs="chunk", stride=8)[0]["entities"]
        assert r.json()["data"][0]["entities"] == want
        assert want != tm.predict([LONG], aggregation_strategy="none", long_inputs="truncate")[0]["entities"]


def test_serve_cli_flags(tiny_dir):
    args = build_parser().parse_args(["serve", str(tiny_dir), "--long-inputs", "chunk", "--stride", "16"])
    assert (args.long_inputs, args.stride) == ("chunk", 16)
    with pytest.raises(ValueError, match="long_inputs must be one of"):
        load_service(str(tiny_dir), long_inputs="sliding")
