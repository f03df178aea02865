"""Extractive QA through the commands and the server: finetune --task qa -> evaluate -> predict, and /v1/qa, on a
tiny random BERT with MiniLM's tokenizer and the synthetic BBC News set."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fastapi.testclient import TestClient

import bertkit
from bertkit.cli.main import main
from bertkit.data.qa_synthetic import bbc_news_qa, synthetic_squad, to_jsonl_rows
from bertkit.data.squad import read_squad
from bertkit.data.tokenizer import Tokenizer
from bertkit.model.directory import load_encoder
from bertkit.model.heads import QuestionAnsweringHead
from bertkit.qa_model import QAModel
from bertkit.serve import ServerConfig, create_app, load_service

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qa_dir(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    encoder, _, _ = load_encoder(tiny_dir)
    torch.manual_seed(0)
    qa = QAModel(QuestionAnsweringHead(encoder), Tokenizer.from_dir(tiny_dir), max_length=64, doc_stride=16)
    qa.save_pretrained(d)
    return d


def write_jsonl(path, data):
    path.write_text("".join(json.dumps(r) + "\n" for r in to_jsonl_rows(data)))
    return path


def test_synthetic_set_is_deterministic_and_extractive():
    a, b = bbc_news_qa("dev", limit=20), bbc_news_qa("dev", limit=20)
    assert [(e.question, e.answers) for e in a.examples] == [(e.question, e.answers) for e in b.examples]
    assert len(a) >= 20 and a.n_skipped == 0
    for e in a.examples:
        start = e.answer_starts[0]
        assert e.context[start:start + len(e.answers[0])] == e.answers[0]
        assert e.answers[0] not in e.question and e.question.endswith("?")
    one = synthetic_squad(["Shares in London fell 1.2% after the decision of the bank on Thursday."])
    assert one.examples[0].answers == ["1.2%"] and "how much" in one.examples[0].question


def test_data_qa_smoke_writes_readable_splits(tmp_path, capsys):
    assert main(["data", "qa-smoke", "-o", str(tmp_path), "--limit", "3"]) == 0
    assert "train  6 questions" in capsys.readouterr().out
    for split in ("train", "dev", "test"):
        data = read_squad(tmp_path / f"{split}.jsonl")
        assert len(data) == 6 and data.n_skipped == 0
    assert [e.question for e in read_squad(tmp_path / "dev.jsonl").examples] == \
        [e.question for e in bbc_news_qa("dev", limit=3).examples]


def test_finetune_evaluate_predict_qa(tiny_dir, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", bbc_news_qa("train", limit=4, per_text=1))
    dev = write_jsonl(tmp_path / "dev.jsonl", bbc_news_qa("dev", limit=3, per_text=1))
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_dir), "--task", "qa", "--train", str(train), "--eval", str(dev),
                 "--max-length", "64", "--doc-stride", "16", "-o", str(out), "--max-steps", "2", "--batch-size", "8",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and {"exact_match", "f1"} <= set(summary["dev"])
    hf = pytest.importorskip("transformers").AutoModelForQuestionAnswering.from_pretrained(out)
    assert type(hf).__name__ == "BertForQuestionAnswering"
    model = bertkit.load_task_model(out)
    assert isinstance(model, QAModel) and (model.max_length, model.doc_stride) == (64, 16)

    assert main(["evaluate", str(out), "--data", str(dev), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 3 and metrics == {**metrics, **{k: summary["dev"][k] for k in ("exact_match", "f1")}}

    pred = tmp_path / "pred.jsonl"
    assert main(["predict", str(out), "-i", str(dev), "-o", str(pred)]) == 0
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    data = read_squad(dev)
    want = model.predict([e.question for e in data.examples], [e.context for e in data.examples])
    assert [(r["id"], r["answer"], r["start"], r["end"]) for r in rows] == \
        [(e.id, w["answer"], w["start"], w["end"]) for e, w in zip(data.examples, want, strict=True)]
    for r, e in zip(rows, data.examples, strict=True):
        assert e.context[r["start"]:r["end"]] == r["answer"] and 0 < r["score"] <= 1
    pred_csv = tmp_path / "pred.csv"
    assert main(["predict", str(out), "-i", str(dev), "-o", str(pred_csv)]) == 0
    table = list(csv.DictReader(pred_csv.open()))
    assert [r["answer"] for r in table] == [r["answer"] for r in rows]


def test_v1_qa(qa_dir):
    service = load_service(str(qa_dir))
    assert "qa" in service.capabilities and "classify" not in service.capabilities
    data = bbc_news_qa("dev", limit=2, per_text=1)
    qs, cs = [e.question for e in data.examples], [e.context for e in data.examples]
    app = create_app(service, ServerConfig(max_texts_per_request=8, max_body_bytes=65536))
    with TestClient(app) as client:
        out = client.post("/v1/qa", json={"question": qs, "context": cs}).json()
        top = client.post("/v1/qa", json={"question": qs[0], "context": cs[0], "top_k": 3}).json()
        shape = client.post("/v1/qa", json={"question": qs, "context": cs[0]})
        long_q = client.post("/v1/qa", json={"question": "why " * 70, "context": "short"})
        not_here = client.post("/v1/ner", json={"input": "a b"})
    want = service.task_model.predict(qs, cs)
    assert [(d["answer"], d["start"], d["end"]) for d in out["data"]] == \
        [(w["answer"], w["start"], w["end"]) for w in want]
    assert [a["answer"] for a in top["data"][0]["answers"]] == [a["answer"] for a in
                                                                 service.task_model.predict(qs[:1], cs[:1],
                                                                                            top_k=3)[0]]
    assert shape.status_code == 422 and shape.json()["error"]["param"] == "context"
    assert long_q.status_code == 422 and "the question has 70 tokens" in long_q.json()["error"]["message"]
    assert not_here.status_code == 400
