"""The server on other families: embeddings, classification and fill-mask of tiny RoBERTa / DeBERTa-v3 / ModernBERT /
MPNet models (tests/families) answer as the library does."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bertkit
from bertkit.serve import ServerConfig, create_app, load_service
from tests.families.models import save_with_tokenizer

TEXTS = ["the river runs at night", "a longer sentence about the interpreter and every module it reads", "hi"]


def post(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "modernbert", "mpnet"])
def test_embeddings_and_classify(variant, tmp_path):
    save_with_tokenizer(variant, tmp_path / "enc")
    save_with_tokenizer(variant, tmp_path / "clf", role="sequence", num_labels=2)
    service = load_service(str(tmp_path / "enc"))
    with TestClient(create_app(service, ServerConfig())) as client:
        out = post(client, "/v1/embeddings", {"input": TEXTS})
    np.testing.assert_allclose([d["embedding"] for d in out["data"]], bertkit.load(tmp_path / "enc").embed(TEXTS),
                               atol=1e-5)
    service = load_service(str(tmp_path / "clf"))
    assert service.capabilities == ["embeddings", "classify"]
    with TestClient(create_app(service, ServerConfig())) as client:
        out = post(client, "/v1/classify", {"input": TEXTS})
    want = bertkit.load_task_model(tmp_path / "clf").predict(TEXTS)
    for d, w in zip(out["data"], want, strict=True):
        assert d["label"] == w["label"]
        assert d["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)


def test_fill_mask_takes_the_models_own_mask_token(tmp_path):
    save_with_tokenizer("roberta", tmp_path, role="mlm", seed=2)
    service = load_service(str(tmp_path))
    assert "fill-mask" in service.capabilities
    with TestClient(create_app(service, ServerConfig())) as client:
        a = post(client, "/v1/fill-mask", {"input": ["the river <mask> at night"], "top_k": 3})
        b = post(client, "/v1/fill-mask", {"input": ["the river [MASK] at night"], "top_k": 3})
    assert [p["token_id"] for p in a["data"][0]["predictions"][0]] == \
        [p["token_id"] for p in b["data"][0]["predictions"][0]]
