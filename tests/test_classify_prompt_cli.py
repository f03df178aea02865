"""``bertkit classify-prompt`` end to end on a tiny masked LM: the probabilities are PromptClassifier's, zero-shot
and after few-shot fitting, --eval's metrics are its ``evaluate``, and bad input names file, line and field."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from bertkit.cli.classify_prompt import DEFAULT_TEMPLATE
from bertkit.cli.main import main
from bertkit.fill_mask import FillMask, PromptClassifier

pytestmark = pytest.mark.usefixtures("one_thread")
TEMPLATE = "{text} It was [MASK]."
VERBALIZERS = {"pos": ["great"], "neg": ["terrible", "awful"]}
TEXTS = ["fine film", "a bad day", "what a movie", "the food was cold"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def toy_set():
    texts = [f"{w} {x}" for x in ("food", "movie", "day", "book", "song", "game") for w in ("good", "bad")]
    return texts, ["pos" if t.startswith("good") else "neg" for t in texts]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_zero_shot_probabilities_are_prompt_classifiers(mlm_dir, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "preds.jsonl"
    assert main(["classify-prompt", str(mlm_dir), "--labels", "pos,neg", "--template", TEMPLATE, "--verbalizer",
                 "pos=great", "neg=terrible,awful", "-i", str(tmp_path / "texts.txt"), "-o", str(out)]) == 0
    assert "4 predictions" in capsys.readouterr().out
    rows = read_jsonl(out)
    want = PromptClassifier(FillMask.from_pretrained(mlm_dir), TEMPLATE, VERBALIZERS).predict_proba(TEXTS)
    got = np.array([[r["probabilities"]["pos"], r["probabilities"]["neg"]] for r in rows])
    assert [r["text"] for r in rows] == TEXTS
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert [r["label"] for r in rows] == [("pos", "neg")[i] for i in want.argmax(1)]
    assert not np.allclose(want, 0.5, atol=1e-3)  # a random head still prefers one label: the check has teeth


def test_default_verbalizers_are_the_labels_and_csv_output(mlm_dir, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"body": t} for t in TEXTS])
    out = tmp_path / "preds.csv"
    assert main(["classify-prompt", str(mlm_dir), "--labels", "great,terrible", "-i", str(tmp_path / "in.jsonl"),
                 "--text-column", "body", "-o", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    want = PromptClassifier(FillMask.from_pretrained(mlm_dir), DEFAULT_TEMPLATE,
                            {"great": ["great"], "terrible": ["terrible"]}).predict_proba(TEXTS)
    got = np.array([[float(r["p_great"]), float(r["p_terrible"])] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_few_shot_fits_first_shots_and_evaluates(mlm_dir, tmp_path, capsys):
    texts, labels = toy_set()  # 6 of each label, interleaved
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)])
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "preds.jsonl"
    args = ["--labels", "pos,neg", "--template", TEMPLATE, "--verbalizer", "pos=great", "neg=terrible,awful",
            "--eval", str(dev)]
    assert main(["classify-prompt", str(mlm_dir), *args]) == 0
    zero_shot = json.loads(capsys.readouterr().out)
    assert zero_shot["examples"] == 12 and zero_shot["accuracy"] == 0.5  # a random head: one label for all
    assert main(["classify-prompt", str(mlm_dir), *args, "--few-shot", str(train), "--shots", "4",
                 "--epochs", "30", "--lr", "3e-3", "--train-batch-size", "8", "-i", str(tmp_path / "texts.txt"),
                 "-o", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    # the same fit in Python on the first 4 rows of each label
    clf = PromptClassifier(FillMask.from_pretrained(mlm_dir), TEMPLATE, VERBALIZERS)
    clf.fit(texts[:8], labels[:8], epochs=30, lr=3e-3, batch_size=8, seed=0)
    assert metrics == {"eval": str(dev), "examples": 12, **clf.evaluate(texts, labels)}
    assert metrics["accuracy"] == 1.0
    got = np.array([[r["probabilities"]["pos"], r["probabilities"]["neg"]] for r in read_jsonl(out)])
    np.testing.assert_allclose(got, clf.predict_proba(TEXTS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("argv, message", [
    (["--labels", "", "--eval", "{tmp}/ok.csv"], "--labels is empty"),
    (["--labels", "pos", "--eval", "{tmp}/ok.csv"], "--labels names one label"),
    (["--labels", "pos,neg", "--verbalizer", "meh=ok", "--eval", "{tmp}/ok.csv"], "'meh' is not one of --labels"),
    (["--labels", "pos,neg", "--verbalizer", "pos", "--eval", "{tmp}/ok.csv"], "expected LABEL=WORD"),
    (["--labels", "pos,neg", "--verbalizer", "pos=zzqxjv", "--eval", "{tmp}/ok.csv"],
     "label 'pos': verbalizer 'zzqxjv' is not a single token"),
    (["--labels", "pos,neg", "--template", "{text} no mask", "--eval", "{tmp}/ok.csv"], r"\[MASK\] exactly once"),
    (["--labels", "pos,neg", "-i", "x.txt"], "--input and --output together"),
    (["--labels", "pos,neg"], "nothing to do"),
    (["--labels", "pos,neg", "--eval", "{tmp}/dev.jsonl", "--shots", "2"], "--shots needs --few-shot"),
    (["--labels", "pos,neg", "--eval", "{tmp}/dev.jsonl"], r"dev\.jsonl, line 3: label 'meh' is not one of --labels"),
    (["--labels", "pos,neg", "--eval", "{tmp}/nolabel.jsonl"], r"nolabel\.jsonl, line 2: missing field 'label'"),
    (["--labels", "pos,neg", "--few-shot", "{tmp}/missing.jsonl", "--eval", "{tmp}/ok.csv"],
     r"missing\.jsonl: file not found"),
    (["--labels", "pos,neg", "--few-shot", "{tmp}/train.txt", "--eval", "{tmp}/ok.csv"],
     r"train\.txt: unsupported format '\.txt' for labelled examples"),
    (["--labels", "pos,neg", "--eval", "{tmp}/bad.csv"], r"bad\.csv, line 1: no column 'label'"),
])
def test_bad_input_is_a_clear_error(mlm_dir, tmp_path, capsys, argv, message):
    write_jsonl(tmp_path / "dev.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
                                         {"text": "c", "label": "meh"}])
    write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "a", "label": "pos"}, {"text": "b"}])
    (tmp_path / "ok.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "bad.csv").write_text("text,tag\na,pos\n")
    (tmp_path / "train.txt").write_text("a\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["classify-prompt", str(mlm_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert "bertkit classify-prompt: error:" in err
    assert re.search(message, err), err
