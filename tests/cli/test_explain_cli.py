"""`bertkit explain`: JSONL + HTML end to end on a tiny classifier, pairs, and the errors a user can make."""

from __future__ import annotations

import json

import pytest

from bertkit.cli.main import main
from tests.compress.family_dirs import task_model

TEXTS = ["the film was wonderful", "<script>alert('x')</script> terrible & slow", "ok"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain_cls")
    task_model("bert", d)
    return d


def test_jsonl_and_html(classifier_dir, tmp_path, capsys, one_thread):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    out, page = tmp_path / "out.jsonl", tmp_path / "view.html"
    assert main(["explain", str(classifier_dir), "--input", str(src), "--output", str(out), "--html", str(page),
                 "--steps", "16", "--batch-size", "5"]) == 0
    assert "3 explanations" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    for r in rows:
        assert {"text", "label", "probabilities", "target", "tokens", "scores", "offsets", "words", "delta", "logit",
                "baseline_logit"} <= set(r)
        assert r["target"] == r["label"] and len(r["tokens"]) == len(r["scores"]) == len(r["offsets"])
        assert abs(sum(r["scores"]) - (r["logit"] - r["baseline_logit"]) - r["delta"]) < 1e-9
        assert r["steps"] == 16
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<tr>") == 1 + len(TEXTS)
    assert "<script" not in html and "&lt;" in html and "&amp;" in html
    assert all(r["label"] in html for r in rows)

    # --target: every input explained for that label
    assert main(["explain", str(classifier_dir), "-i", str(src), "-o", str(out), "--target", "neg",
                 "--steps", "4"]) == 0
    assert {json.loads(line)["target"] for line in out.read_text(encoding="utf-8").splitlines()} == {"neg"}


def test_warns_when_steps_are_too_few(tmp_path, caplog, one_thread):
    """DeBERTa-v3's pad baseline needs many steps (tests/test_explain.py): 2 steps miss completeness, and the
    command says so."""
    d = tmp_path / "deberta"
    task_model("deberta-v3", d)
    src = tmp_path / "in.txt"
    src.write_text("Stocks fell sharply after the central bank raised interest rates again\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="bertkit"):
        assert main(["explain", str(d), "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--steps", "2"]) == 0
    assert "more --steps" in caplog.text


def test_pairs(tmp_path, capsys, one_thread):
    d = tmp_path / "pairs"
    task_model("bert", d, task="pair-classification", labels=("no", "yes"))
    src = tmp_path / "in.csv"
    src.write_text("text,text_pair\na cat,a small cat\nrain,it is sunny\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["explain", str(d), "-i", str(src), "-o", str(out), "--steps", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text_pair"] for r in rows] == ["a small cat", "it is sunny"]
    assert {o[2] for o in rows[0]["offsets"]} == {None, 0, 1}
    txt = tmp_path / "in.txt"
    txt.write_text("a cat\n", encoding="utf-8")
    assert main(["explain", str(d), "-i", str(txt), "-o", str(out)]) == 2
    assert "two texts per row" in capsys.readouterr().err


def test_errors_name_the_problem_and_write_nothing(classifier_dir, tiny_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a text\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    cases = [
        (["explain", str(classifier_dir), "-i", str(src), "-o", str(out), "--target", "happy"],
         "unknown target 'happy'; this model's labels are: neg, neu, pos"),
        (["explain", str(tiny_dir), "-i", str(src), "-o", str(out)], "is not a task model"),
        (["explain", str(classifier_dir), "-i", str(src), "-o", str(tmp_path / "out.csv")], "expected .jsonl"),
        (["explain", str(classifier_dir), "-i", str(src), "-o", str(out), "--html", str(tmp_path / "v.txt")],
         "expected .html"),
        (["explain", str(classifier_dir), "-i", str(tmp_path / "missing.txt"), "-o", str(out)], "missing.txt"),
        (["explain", str(classifier_dir), "-i", str(src), "-o", str(out), "--steps", "0"], "n_steps must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()
