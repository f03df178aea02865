"""`bertkit predict DIR DIR ...` and `bertkit evaluate DIR DIR ...` end to end on two tiny task models of two
families; the per-label table; --threshold and --weights; mismatched label sets fail naming both."""

import csv
import json

import numpy as np
import pytest

from bertkit import Ensemble
from bertkit.cli.main import main
from tests.predictions.models import TEXTS, saved

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ("neg", "neu", "pos")
GOLD = ["neg", "pos", "neu", "pos", "neg", "neu"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ens")
    saved(root / "a", "classification", LABELS, seed=0)
    saved(root / "b", "classification", LABELS, seed=1, variant="roberta")
    return [root / "a", root / "b"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    with open(tmp_path / "dev.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(TEXTS, GOLD, strict=True))
    return tmp_path


def test_predict_averages_the_models(dirs, files, capsys):
    out = files / "out.jsonl"
    assert main(["predict", str(dirs[0]), str(dirs[1]), "-i", str(files / "in.txt"), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    singles = []
    for d in dirs:
        one = files / f"{d.name}.jsonl"
        assert main(["predict", str(d), "-i", str(files / "in.txt"), "-o", str(one)]) == 0
        singles.append([json.loads(line)["probabilities"] for line in one.read_text().splitlines()])
    for r, pa, pb in zip(rows, *singles, strict=True):
        for n in LABELS:
            assert r["probabilities"][n] == pytest.approx((pa[n] + pb[n]) / 2, abs=2e-6)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    weighted = files / "w.csv"
    assert main(["predict", *map(str, dirs), "--weights", "1", "3", "-i", str(files / "in.txt"),
                 "-o", str(weighted)]) == 0
    with open(weighted, newline="") as f:
        got = [[float(row[f"p_{n}"]) for n in LABELS] for row in csv.DictReader(f)]
    want = [[0.25 * pa[n] + 0.75 * pb[n] for n in LABELS] for pa, pb in zip(*singles, strict=True)]
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_evaluate_ensemble_json_and_table(dirs, files, capsys):
    assert main(["evaluate", *map(str, dirs), "--data", str(files / "dev.csv"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    from bertkit.data.tasks import read_task_file

    want = Ensemble.from_pretrained(dirs).evaluate(read_task_file(files / "dev.csv", "classification"))
    assert metrics["examples"] == 6 and metrics["accuracy"] == pytest.approx(want["accuracy"])
    assert metrics["per_label"] == want["per_label"]
    assert main(["evaluate", str(dirs[0]), "--data", str(files / "dev.csv")]) == 0
    text = capsys.readouterr().out
    assert "label  precision  recall      f1  support" in text
    for n in LABELS:
        assert any(line.split()[:1] == [n] and line.split()[-1] == "2" for line in text.splitlines()), n


def test_mismatched_labels_and_bad_flags_fail_clearly(dirs, files, tmp_path, capsys):
    other = saved(tmp_path / "other", "classification", ("neg", "other", "pos"), seed=2).directory
    out = str(files / "out.jsonl")
    assert main(["predict", str(dirs[0]), str(other), "-i", str(files / "in.txt"), "-o", out]) == 2
    err = capsys.readouterr().err
    assert "different label sets" in err and "{neg, neu, pos}" in err and "{neg, other, pos}" in err
    assert str(other) in err
    assert main(["predict", *map(str, dirs), "--weights", "1", "-i", str(files / "in.txt"), "-o", out]) == 2
    assert "1 weights for 2 model directories" in capsys.readouterr().err
    assert main(["evaluate", str(dirs[0]), "--data", str(files / "dev.csv"), "--threshold", "0.3"]) == 2
    assert "--threshold is for multilabel models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(dirs[0]), "--threshold", "high", "-i", str(files / "in.txt"), "-o", out])
    assert "'fixed' or 'tuned'" in capsys.readouterr().err


def test_multilabel_threshold_flag(tmp_path, files, capsys, caplog):
    d = tmp_path / "ml"
    model = saved(d, "multilabel", LABELS, seed=0)
    model.thresholds = {"neg": 0.0, "neu": 1.0, "pos": 0.5}  # extreme, so the effect is certain
    model.save_pretrained(d)
    out = files / "ml.jsonl"

    def labels(*flags):
        assert main(["predict", str(d), "-i", str(files / "in.txt"), "-o", str(out), *flags]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    with caplog.at_level("INFO", logger="bertkit"):
        rows = labels()
    assert "per-label thresholds tuned on dev (neg=0.000, neu=1.000, pos=0.500)" in caplog.text
    assert all("neg" in r["labels"] and "neu" not in r["labels"] for r in rows)
    assert all(r["labels"] == [n for n in LABELS if r["probabilities"][n] >= 0.5] for r in labels("--threshold",
                                                                                                  "fixed"))
    assert all(r["labels"] == list(LABELS) for r in labels("--threshold", "0"))
    capsys.readouterr()
    dev = files / "ml.csv"
    dev.write_text("text,label\n" + "".join(f'"{t}",neg|pos\n' for t in TEXTS))
    assert main(["evaluate", str(d), "--data", str(dev), "--json", "--threshold", "0"]) == 0
    m = json.loads(capsys.readouterr().out)
    # everything predicted: neg and pos right, neu wrong on every example
    assert m["per_label"]["neg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 6}
    assert m["per_label"]["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_predict_ner_ensemble(tmp_path, files):
    tags = ("O", "B-PER", "I-PER")
    a = saved(tmp_path / "a", "ner", tags, seed=0).directory
    b = saved(tmp_path / "b", "ner", tags, seed=1, variant="roberta").directory
    out = files / "ner.jsonl"
    assert main(["predict", str(a), str(b), "-i", str(files / "in.txt"), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = Ensemble.from_pretrained([a, b]).predict(TEXTS)
    assert rows == want and [r["words"] for r in rows] == [t.split() for t in TEXTS]
    assert main(["predict", str(a), str(b), "-i", str(files / "in.txt"), "-o", str(files / "ner.csv")]) == 2
