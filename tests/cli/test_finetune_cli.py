"""finetune -> evaluate -> predict through the command line on a tiny random BERT."""

import csv
import json
import random

import pytest

from bertkit.cli.main import main

WORDS = "good great love best music film game war death king river water night school city team".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def sentence(rnd):
    return " ".join(rnd.choices(WORDS, k=rnd.randint(2, 6)))


def write_csv(path, n, seed):
    rnd = random.Random(seed)
    labels = ["neg", "pos"]
    path.write_text("text,label\n" + "".join(f"{sentence(rnd)},{labels[i % 2]}\n" for i in range(n)))
    return path


def write_conll(path, n, seed):
    rnd = random.Random(seed)
    blocks = []
    for _ in range(n):
        words = sentence(rnd).split()
        tags = ["B-LOC" if w in ("city", "river") else "O" for w in words]
        blocks.append("\n".join(f"{w}\t{t}" for w, t in zip(words, tags, strict=True)))
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def test_finetune_evaluate_predict(tmp_path, tiny_dir, capsys):
    """finetune prints a JSON summary; evaluate --json prints exactly one JSON object with accuracy; predict
    writes one row per input line to .jsonl and .csv."""
    train, dev = write_csv(tmp_path / "train.csv", 12, 0), write_csv(tmp_path / "dev.csv", 6, 1)
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_dir), "--task", "classification", "--train", str(train),
                 "--eval", str(dev), "-o", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["stopped"] == "done" and "accuracy" in summary["dev"]
    assert (out / "model.safetensors").is_file() and (out / "checkpoints").is_dir()

    assert main(["evaluate", str(out), "--data", str(dev), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert metrics["examples"] == 6 and 0 <= metrics["accuracy"] <= 1
    assert metrics["accuracy"] == pytest.approx(summary["dev"]["accuracy"])

    texts = ["good music", "war and death", "", "king of the river city"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    assert main(["predict", str(out), "--input", str(tmp_path / "texts.txt"), "--output",
                 str(tmp_path / "preds.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    for r in rows:
        assert r["label"] in ("neg", "pos") and set(r["probabilities"]) == {"neg", "pos"}
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)

    assert main(["predict", str(out), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "preds.csv")]) == 0
    with open(tmp_path / "preds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["text"] for r in table] == texts and list(table[0]) == ["text", "label", "p_neg", "p_pos"]
    for r, j in zip(table, rows, strict=True):
        assert r["label"] == j["label"]
        assert float(r["p_pos"]) == pytest.approx(j["probabilities"]["pos"], abs=1e-6)


def test_evaluate_text_report(tmp_path, tiny_dir, capsys):
    train, dev = write_csv(tmp_path / "train.csv", 8, 0), write_csv(tmp_path / "dev.csv", 4, 1)
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_dir), "--train", str(train), "--eval", str(dev), "-o", str(out),
                 "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(dev)]) == 0
    text = capsys.readouterr().out
    assert "4 examples, task classification" in text and "accuracy" in text


def test_ner_finetune_and_predict_from_txt(tmp_path, tiny_dir, capsys):
    """NER from .conll files; predict reads one sentence per line of a .txt and tags every word."""
    train, dev = write_conll(tmp_path / "train.conll", 12, 0), write_conll(tmp_path / "dev.conll", 4, 1)
    out = tmp_path / "ner"
    assert main(["finetune", "--model", str(tiny_dir), "--task", "ner", "--train", str(train), "--eval", str(dev),
                 "-o", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and "f1" in summary["dev"]
    lines = ["the city by the river", "good music", "", "kingsriver waterfilms night"]
    (tmp_path / "sents.txt").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(out), "-i", str(tmp_path / "sents.txt"), "-o", str(tmp_path / "tags.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    assert [r["words"] for r in rows] == [line.split() for line in lines]
    assert all(len(r["tags"]) == len(r["words"]) and set(r["tags"]) <= {"O", "B-LOC"} for r in rows)
    assert main(["predict", str(out), "-i", str(tmp_path / "sents.txt"), "-o", str(tmp_path / "tags.csv")]) == 2
    assert "write .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "tags.csv").exists()


def test_finetune_into_non_empty_output_is_exit_2(tmp_path, tiny_dir, capsys):
    train, dev = write_csv(tmp_path / "train.csv", 8, 0), write_csv(tmp_path / "dev.csv", 4, 1)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = main(["finetune", "--model", str(tiny_dir), "--train", str(train), "--eval", str(dev), "-o", str(out),
                 "--epochs", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert "bertkit finetune: error:" in captured.err and "not empty" in captured.err and "--resume" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_finetune_bad_settings_are_exit_2(tmp_path, tiny_dir, capsys):
    train = write_csv(tmp_path / "train.csv", 8, 0)
    assert main(["finetune", "--model", str(tiny_dir), "--train", str(train), "-o", str(tmp_path / "o"),
                 "--time-budget", "soon", "--no-progress"]) == 2
    assert "cannot read duration 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
