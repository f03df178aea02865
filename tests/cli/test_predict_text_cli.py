"""`bertkit predict --aggregation-strategy`: raw texts (.txt lines, .jsonl `text`) -> entities with character
offsets, the same as TaskModel.predict; `bertkit finetune --scheme` is checked."""

import json

import pytest

from bertkit.cli.main import main
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import task_model

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
LINES = ["John  Smith lives in New-York, doesn't he?", "The parser returns a value.", "x"]


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    task_model("bert", d, task="ner", labels=LABELS)
    return d


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_predict_raw_text(tmp_path, ner_dir, suffix, capsys):
    src = tmp_path / f"texts{suffix}"
    src.write_text("\n".join(json.dumps({"text": t}) if suffix == ".jsonl" else t for t in LINES) + "\n")
    out = tmp_path / "ents.jsonl"
    assert main(["predict", str(ner_dir), "-i", str(src), "-o", str(out), "--aggregation-strategy", "first"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = TaskModel.from_pretrained(ner_dir).predict(LINES, aggregation_strategy="first")
    assert [r["text"] for r in rows] == LINES and len(rows) == len(want)
    for r, w in zip(rows, want, strict=True):
        assert r["entities"] == w["entities"]  # JSON keeps a float exactly
        for e in r["entities"]:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
    assert sum(len(r["entities"]) for r in rows) > 0


def test_predict_raw_text_in_windows(tmp_path, ner_dir, capsys):
    long = " ".join(["John Smith lives in New York and works in Paris."] * 20)  # past max_length
    src = tmp_path / "texts.txt"
    src.write_text(f"{LINES[0]}\n{long}\n")
    out = tmp_path / "ents.jsonl"
    assert main(["predict", str(ner_dir), "-i", str(src), "-o", str(out), "--aggregation-strategy", "simple",
                 "--long-inputs", "chunk", "--stride", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tm = TaskModel.from_pretrained(ner_dir)
    want = tm.predict([LINES[0], long], aggregation_strategy="simple", long_inputs="chunk", stride=8)
    assert [r["entities"] for r in rows] == [w["entities"] for w in want]
    assert want != tm.predict([LINES[0], long], aggregation_strategy="simple")  # truncation stops early


def test_predict_strategy_flag_is_checked(tmp_path, ner_dir, capsys):
    (tmp_path / "t.txt").write_text("a b\n")
    with pytest.raises(SystemExit):
        main(["predict", str(ner_dir), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.jsonl"),
              "--aggregation-strategy", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_finetune_scheme_flag(tmp_path, capsys):
    (tmp_path / "t.conll").write_text("a O\n")
    with pytest.raises(SystemExit):
        main(["finetune", "--task", "ner", "--train", str(tmp_path / "t.conll"), "-o", str(tmp_path / "o"),
              "--scheme", "iob2"])
    assert "invalid choice: 'iob2'" in capsys.readouterr().err
