"""/v1/ner on raw texts with aggregation_strategy: the entities TaskModel.predict gives (character offsets); the
word-list form is unchanged; word lists with a strategy are a 422 naming the field."""

import pytest
from fastapi.testclient import TestClient

from bertkit.inference.token_aggregation import STRATEGIES
from tests.serve.test_app import assert_error, post

TEXTS = ["John  Smith lives in Paris, doesn't he?", "unbelievably tokenization-heavy"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ner_raw_text(services, make_app, strategy):
    service = services["ner"]
    with TestClient(make_app(service)) as client:
        out = post(client, "/v1/ner", {"input": TEXTS, "aggregation_strategy": strategy})
        one = post(client, "/v1/ner", {"input": TEXTS[0], "aggregation_strategy": strategy})
    want = service.task_model.predict(TEXTS, aggregation_strategy=strategy)
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert [{k: v for k, v in d.items() if k != "index"} for d in out["data"]] == want
    assert one["data"][0]["entities"] == want[0]["entities"]
    assert out["usage"]["prompt_tokens"] > 0
    if strategy == "none":  # the random head tags some tokens: there is something to compare
        assert any(w["entities"] for w in want)


def test_ner_strategy_errors(services, make_app):
    with TestClient(make_app(services["ner"])) as client:
        words = assert_error(post(client, "/v1/ner", {"input": [["John", "Smith"]], "aggregation_strategy": "simple"},
                                  422))
        bad = assert_error(post(client, "/v1/ner", {"input": "x", "aggregation_strategy": "best"}, 422))
        plain = post(client, "/v1/ner", {"input": [["John", "Smith"]]})
    assert words["message"] == "aggregation_strategy takes raw texts, not word lists" and words["param"] == "input"
    assert "aggregation_strategy" in bad["message"]
    assert set(plain["data"][0]) == {"index", "words", "tags", "entities"}
