"""/v1/classify with "explain": attributions next to each label, equal to bertkit.explain's; the budget they are
charged; the errors."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from bertkit.explain import explain
from tests.serve.test_app import assert_error, post

TEXTS = ["the cat sat on the mat", "a longer sentence about rivers and mountains in the north"]


def test_classify_with_explanations(services, make_app):
    service = services["classification"]
    with TestClient(make_app(service)) as client:
        plain = post(client, "/v1/classify", {"input": TEXTS})
        out = post(client, "/v1/classify", {"input": TEXTS, "explain": True, "explain_steps": 20})
        one = post(client, "/v1/classify", {"input": TEXTS[0], "explain": True, "explain_target": "neg"})
    assert [{k: v for k, v in d.items() if k != "explanation"} for d in out["data"]] == plain["data"]
    assert "explanation" not in plain["data"][0]
    want = explain(service.task_model, TEXTS, n_steps=20)
    for d, w in zip(out["data"], want, strict=True):
        got = d["explanation"]
        assert got["target"] == d["label"] == w.target and got["tokens"] == w.tokens and got["steps"] == 20
        np.testing.assert_allclose(got["scores"], w.scores, atol=1e-6)
        assert abs(sum(got["scores"]) - (got["logit"] - got["baseline_logit"]) - got["delta"]) < 1e-9
    assert out["usage"] == plain["usage"]
    assert one["data"][0]["explanation"]["target"] == "neg" and one["data"][0]["explanation"]["steps"] == 50


def test_regression_explains_the_score(services, make_app):
    with TestClient(make_app(services["regression"])) as client:
        out = post(client, "/v1/classify", {"input": TEXTS, "explain": True, "explain_steps": 8})
    assert all(d["explanation"]["target"] == "score" and "score" in d for d in out["data"])


def test_explanation_errors(services, make_app):
    service = services["classification"]
    with TestClient(make_app(service, max_request_tokens=200)) as client:
        bad_target = assert_error(post(client, "/v1/classify", {"input": "x", "explain": True,
                                                                "explain_target": "happy"}, 422))
        no_flag = assert_error(post(client, "/v1/classify", {"input": "x", "explain_steps": 10}, 422))
        too_many = assert_error(post(client, "/v1/classify", {"input": "x", "explain": True,
                                                              "explain_steps": 10000}, 422))
        # the texts' tokens pass the plain budget of 200, not 50 x tokens of explanation; 9 x tokens do
        costly = assert_error(post(client, "/v1/classify", {"input": TEXTS, "explain": True}, 413))
        cheap = post(client, "/v1/classify", {"input": TEXTS, "explain": True, "explain_steps": 9})
    assert bad_target["param"] == "explain_target" and "neg, neu, pos" in bad_target["message"]
    assert no_flag["param"] == "explain_steps" and '"explain": true' in no_flag["message"]
    assert too_many["param"] == "explain_steps"
    n = sum(service.count_tokens(TEXTS))
    assert 9 * n <= 200 < 50 * n
    assert costly["code"] == "too_many_tokens" and f"explain_steps x tokens = 50 x {n} =" in costly["message"]
    assert len(cheap["data"]) == 2
    with TestClient(make_app(services["ner"])) as client:  # the endpoint itself is refused first
        assert "/v1/ner" in assert_error(post(client, "/v1/classify", {"input": "x", "explain": True}, 400))["message"]
