"""The fine-tuning data layer: every file format per task, every bad input, splits, and the built-in datasets."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.tag_schemes import TagSchemeError, resolve_scheme
from bertkit.data.tasks import (
    BUILTIN_DATASETS,
    TASKS,
    TaskData,
    check_known_labels,
    describe,
    load_builtin,
    read_task_file,
    split_dataset,
)
from bertkit.errors import BertkitError, InputFileError

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def write(tmp_path, fmt: str, rows: list[dict], name: str = "data") -> object:
    """Write dict rows as .csv/.tsv (header from the first row), .jsonl or .parquet; return the path."""
    path = tmp_path / f"{name}.{fmt}"
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="") as f:
            w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            w.writerow(rows[0])
            for row in rows:
                w.writerow(["" if v is None else v for v in row.values()])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# each task in each format


@pytest.mark.parametrize("fmt", FORMATS)
def test_classification(tmp_path, fmt):
    rows = [{"text": "good film", "label": "pos"}, {"text": "dull, long", "label": "neg"},
            {"text": "fine", "label": "pos"}]
    data = read_task_file(write(tmp_path, fmt, rows), "classification")
    assert data.task == "classification" and len(data) == 3
    assert data.texts == ["good film", "dull, long", "fine"] and data.labels == ["pos", "neg", "pos"]
    assert data.pairs is None and data.words is None and data.source.endswith(f"data.{fmt}")
    assert data.label_names() == ["neg", "pos"] and data.label_counts() == {"neg": 1, "pos": 2}


@pytest.mark.parametrize("fmt", FORMATS)
def test_classification_integer_ids_become_names(tmp_path, fmt):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 1}]
    assert read_task_file(write(tmp_path, fmt, rows), "classification").labels == ["0", "1", "1"]


def test_classification_json_bools_and_integral_floats(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n{"text": "c", "label": 2.0}\n')
    assert read_task_file(f, "classification").labels == ["1", "0", "2"]
    g = tmp_path / "c.csv"
    g.write_text("text,label\na,1.0\nb,007\nc,3.5.1\n")
    assert read_task_file(g, "classification").labels == ["1", "007", "3.5.1"]  # only real numbers are numbers


def test_custom_columns(tmp_path):
    rows = [{"sentence": "x", "y": "a", "id": 1}, {"sentence": "z", "y": "b", "id": 2}]
    data = read_task_file(write(tmp_path, "csv", rows), "classification", text_column="sentence", label_column="y")
    assert data.texts == ["x", "z"] and data.labels == ["a", "b"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_pair_classification(tmp_path, fmt):
    rows = [{"text": "a man sleeps", "text_pair": "a person rests", "label": "entailment"},
            {"text": "a dog runs", "text_pair": "a cat sits", "label": "contradiction"}]
    data = read_task_file(write(tmp_path, fmt, rows), "pair-classification")
    assert data.texts == ["a man sleeps", "a dog runs"] and data.pairs == ["a person rests", "a cat sits"]
    assert data.labels == ["entailment", "contradiction"]
    sub = data.subset([1])
    assert sub.pairs == ["a cat sits"] and sub.texts == ["a dog runs"] and sub.source == data.source


def test_pair_column_required_and_renamable(tmp_path):
    path = write(tmp_path, "csv", [{"text": "a", "label": "x"}])
    with pytest.raises(InputFileError, match=r"line 1: no column 'text_pair' in the header \(columns: text, label\)"):
        read_task_file(path, "pair-classification")
    path = write(tmp_path, "jsonl", [{"q": "a", "p": "b", "label": "x"}])
    assert read_task_file(path, "pair-classification", text_column="q", text_pair_column="p").pairs == ["b"]
    with pytest.raises(ValueError, match="pair-classification"):
        read_task_file(path, "classification", text_pair_column="p")


@pytest.mark.parametrize("fmt", FORMATS)
def test_multilabel(tmp_path, fmt):
    lists = [["sports", "politics"], [], ["tech"], ["tech", "tech"]]
    if fmt in ("csv", "tsv"):
        rows = [{"text": f"t{i}", "label": " | ".join(labels)} for i, labels in enumerate(lists)]
    else:
        rows = [{"text": f"t{i}", "label": labels} for i, labels in enumerate(lists)]
    data = read_task_file(write(tmp_path, fmt, rows), "multilabel")
    assert data.labels == [["sports", "politics"], [], ["tech"], ["tech"]]  # empty list kept; repeats dropped
    assert data.label_names() == ["politics", "sports", "tech"]
    assert data.label_counts() == {"politics": 1, "sports": 1, "tech": 2}


def test_multilabel_separator(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("text,label\na,x;y\nb,\n")
    assert read_task_file(f, "multilabel", label_separator=";").labels == [["x", "y"], []]


@pytest.mark.parametrize("fmt", FORMATS)
def test_regression(tmp_path, fmt):
    rows = [{"text": "a", "label": 0.5}, {"text": "b", "label": 3}, {"text": "c", "label": -1.25}]
    data = read_task_file(write(tmp_path, fmt, rows), "regression")
    assert data.labels == [0.5, 3.0, -1.25] and all(isinstance(x, float) for x in data.labels)
    assert data.label_names() == [] and data.label_counts() == {}


CONLL = """-DOCSTART- -X- -X- O

EU\tB-org
rejects\tO
German\tB-misc
call\tO
\t
Peter NNP B-NP B-person
Blackburn NNP I-NP I-person
.   .   O   O
"""


def test_ner_conll(tmp_path):
    f = tmp_path / "ner.conll"
    f.write_text(CONLL)
    data = read_task_file(f, "ner")
    assert data.task == "ner" and len(data) == 2 and data.texts == [] and data.pairs is None
    assert data.words == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn", "."]]
    assert data.labels == [["B-org", "O", "B-misc", "O"], ["B-person", "I-person", "O"]]
    assert data.where == ["line 3", "line 8"]
    assert data.label_names() == ["O", "B-misc", "B-org", "B-person", "I-person"]
    assert data.label_counts()["O"] == 3 and data.label_counts()["I-person"] == 1
    for suffix in ("txt", "tsv"):
        (tmp_path / f"ner.{suffix}").write_text(CONLL)
        assert read_task_file(tmp_path / f"ner.{suffix}", "ner").labels == data.labels


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_ner_jsonl_and_parquet(tmp_path, fmt):
    rows = [{"tokens": ["New", "York", "rocks"], "tags": ["B-loc", "I-loc", "O"]},
            {"tokens": ["hi"], "tags": ["O"]}]
    data = read_task_file(write(tmp_path, fmt, rows), "ner")
    assert data.words == [["New", "York", "rocks"], ["hi"]] and data.labels == [["B-loc", "I-loc", "O"], ["O"]]
    renamed = [{"w": r["tokens"], "t": r["tags"]} for r in rows]
    data = read_task_file(write(tmp_path, fmt, renamed, "renamed"), "ner", text_column="w", label_column="t")
    assert data.labels[0] == ["B-loc", "I-loc", "O"]


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_empty_rows_are_skipped_with_one_warning(tmp_path, caplog):
    f = tmp_path / "gaps.csv"
    f.write_text("text,label\na,x\n,x\nb,\n   ,y\nc,y\n")
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        data = read_task_file(f, "classification")
    assert data.texts == ["a", "c"] and data.where == ["line 2", "line 6"]
    [record] = caplog.records
    assert "skipped 3 of 5 rows" in record.getMessage() and "lines 3, 4, 5)" in record.getMessage()


def test_jsonl_null_and_missing_fields_are_skipped(tmp_path, caplog):
    f = tmp_path / "gaps.jsonl"
    lines = ['{"text": "a", "label": "x"}'] + ['{"text": "b"}', '{"text": null, "label": "x"}'] * 4
    f.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        assert read_task_file(f, "classification").texts == ["a"]
    [record] = caplog.records
    assert "skipped 8 of 9 rows" in record.getMessage() and "lines 2, 3, 4, 5, 6, ...)" in record.getMessage()


def test_parquet_nulls_skipped_by_row(tmp_path, caplog):
    path = write(tmp_path, "parquet", [{"text": "a", "label": 1.5}, {"text": "b", "label": None}])
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        assert read_task_file(path, "regression").labels == [1.5]
    assert "rows 2)" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("f.csv", "text,label\na,pos\nb,3.5\n", r"f\.csv, line 3: label column 'label' holds a number \(3\.5\); "
                                                r"classification needs class names or integer class ids — for "
                                                r"numeric targets use --task regression"),
        ("f.tsv", "text\tlabel\na\t1e-3\n", r"f\.tsv, line 2: label column 'label' holds a number \(0\.001\)"),
        ("f.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": 0.73}\n',
         r"f\.jsonl, line 3: label column 'label' holds a number \(0\.73\)"),
        ("f.jsonl", '{"text": "a", "label": {"x": 1}}\n', r"line 1: label column 'label' holds dict"),
        ("f.jsonl", '{"text": 5, "label": "x"}\n', r"line 1: text column 'text' holds int 5, expected a string"),
    ],
)
def test_bad_classification_label(tmp_path, name, content, pattern):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputFileError, match=pattern):
        read_task_file(tmp_path / name, "classification")


def test_float_label_in_parquet_names_the_row(tmp_path):
    path = write(tmp_path, "parquet", [{"text": "a", "label": 1.0}, {"text": "b", "label": 0.25}])
    with pytest.raises(InputFileError, match=r"data\.parquet: row 2: label column 'label' holds a number \(0\.25\)"):
        read_task_file(path, "classification")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("text,label\na,0.5\nb,positive\n",
         r"line 3: label column 'label' holds 'positive'; regression needs numbers — for class names use --task "
         r"classification"),
        ("text,label\na,inf\n", r"line 2: .*regression needs finite numbers"),
    ],
)
def test_bad_regression_label(tmp_path, content, pattern):
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(InputFileError, match=pattern):
        read_task_file(tmp_path / "r.csv", "regression")


def test_regression_json_string_label(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"text": "a", "label": "2.5"}\n{"text": "b", "label": "high"}\n')
    with pytest.raises(InputFileError, match=r"r\.jsonl, line 2: label column 'label' holds 'high'"):
        read_task_file(tmp_path / "r.jsonl", "regression")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("EU\tB-org\nrejects\n", r"line 2: expected a token and its tag, got 'rejects'"),
        ("\n-DOCSTART-\n\n", r"no usable examples"),
    ],
)
def test_bad_conll(tmp_path, content, pattern):
    (tmp_path / "ner.conll").write_text(content)
    with pytest.raises(InputFileError, match=pattern):
        read_task_file(tmp_path / "ner.conll", "ner")


# Which tag may follow which is checked once the scheme is known (bertkit.data.tag_schemes.resolve_scheme): the
# error names the file, the line the sentence starts on and the token.
@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("EU\tB-ORG\nrejects\tPER\n", r"ner\.conll, line 1: token 2 \('rejects'\): tag 'PER' is not BIO"),
        ("a\tO\n\nNew\tO\nYork\tI-place\n", r"ner\.conll, line 3: token 2 \('York'\): I-place follows O; BIO needs "
                                         r"B-place first"),
        ("Peter\tI-person\n", r"line 1: token 1 \('Peter'\): I-person starts the sentence; BIO needs B-person first"),
        ("New\tB-place\nYork\tI-person\n", r"line 1: token 2 \('York'\): I-person follows B-place; BIO needs "
                                          r"B-person first"),
        # I-x right after a sentence break is an error even if the previous sentence ended inside an x entity
        ("New\tB-x\nYork\tI-x\n\nCity\tI-x\n", "line 4: token 1 \\('City'\\): I-x starts the sentence"),
    ],
)
def test_conll_tags_breaking_bio(tmp_path, content, pattern):
    (tmp_path / "ner.conll").write_text(content)
    data = read_task_file(tmp_path / "ner.conll", "ner")
    with pytest.raises(TagSchemeError, match=pattern):
        resolve_scheme("bio", data)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([{"tokens": ["a", "b"], "tags": ["O"]}], r"line 1: 2 tokens but 1 tags"),
        ([{"tokens": "a b", "tags": ["O", "O"]}], r"line 1: column 'tokens' must be a list of strings"),
        ([{"tokens": ["a"], "tags": ["B x"]}], r"line 1: token 1 \('a'\): tag 'B x' is empty or holds spaces"),
    ],
)
def test_bad_ner_jsonl(tmp_path, rows, pattern):
    with pytest.raises(InputFileError, match=pattern):
        read_task_file(write(tmp_path, "jsonl", rows), "ner")


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O", "I-x"]}],
         r"line 2: token 2 \('b'\): I-x follows O; BIO needs B-x first"),
        ([{"tokens": ["a"], "tags": ["B_x"]}], r"line 1: token 1 \('a'\): tag 'B_x' is not BIO"),
    ],
)
def test_ner_jsonl_breaking_bio(tmp_path, rows, pattern):
    data = read_task_file(write(tmp_path, "jsonl", rows), "ner")
    with pytest.raises(TagSchemeError, match=pattern):
        resolve_scheme("bio", data)


def test_bad_ner_parquet_names_the_row(tmp_path):
    rows = [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}]
    with pytest.raises(InputFileError, match=r"data\.parquet: row 2: 2 tokens but 1 tags"):
        read_task_file(write(tmp_path, "parquet", rows), "ner")


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        ("csv", r"line 1: no column 'label' in the header \(columns: text, sentiment\)"),
        ("tsv", r"line 1: no column 'label' in the header \(columns: text, sentiment\)"),
        ("jsonl", r"no field 'label' in any object \(fields: text, sentiment\)"),
        ("parquet", r"no column 'label' \(columns: text, sentiment\)"),
    ],
)
def test_missing_column_lists_columns(tmp_path, fmt, pattern):
    path = write(tmp_path, fmt, [{"text": "a", "sentiment": "pos"}])
    with pytest.raises(InputFileError, match=pattern):
        read_task_file(path, "classification")


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_usable_examples(tmp_path, fmt, caplog):
    path = write(tmp_path, fmt, [{"text": " ", "label": "x"}, {"text": "b", "label": None}])
    with pytest.raises(InputFileError, match=r"no usable examples"):
        read_task_file(path, "classification")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputFileError, match=r"empty\.jsonl: no usable examples"):
        read_task_file(tmp_path / "empty.jsonl", "regression")


def test_file_problems(tmp_path):
    with pytest.raises(InputFileError, match=r"nope\.csv: file not found"):
        read_task_file(tmp_path / "nope.csv", "classification")
    with pytest.raises(InputFileError, match=r"nope\.parquet: file not found"):
        read_task_file(tmp_path / "nope.parquet", "classification")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(InputFileError, match=r"unsupported format '\.xlsx'"):
        read_task_file(tmp_path / "x.xlsx", "classification")
    (tmp_path / "x.csv").write_text("text,label\na,b\nc\n")
    with pytest.raises(InputFileError, match=r"x\.csv, line 3: row has 1 fields, the header has 2"):
        read_task_file(tmp_path / "x.csv", "classification")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputFileError, match=r"bad\.parquet: cannot read as parquet"):
        read_task_file(tmp_path / "bad.parquet", "classification")
    with pytest.raises(ValueError, match="unknown task 'tagging'; expected one of classification, "):
        read_task_file(tmp_path / "x.csv", "tagging")


def test_multiline_csv_cell_reports_the_row_start(tmp_path):
    (tmp_path / "m.csv").write_text('text,label\n"two\nlines",a\nb,3.5\n')
    with pytest.raises(InputFileError, match=r"m\.csv, line 4: label column"):
        read_task_file(tmp_path / "m.csv", "classification")


# ---------------------------------------------------------------------------------------------------------------
# splitting


def make(labels: list, task: str = "classification") -> TaskData:
    return TaskData(task, [f"text {i}" for i in range(len(labels))], None, list(labels), None, "mem")


def test_split_is_deterministic_stratified_and_a_partition():
    labels = ["a"] * 500 + ["b"] * 300 + ["c"] * 150 + ["d"] * 47 + ["e"] * 3
    data = make(labels)
    splits = split_dataset(data, seed=7)
    assert list(splits) == ["train", "dev", "test"]
    # rounded per class (e's 3 examples go one to each split), so totals are within a few of 800/100/100
    assert [len(s) for s in splits.values()] == [798, 101, 101]
    indices = {name: [int(t.split()[1]) for t in s.texts] for name, s in splits.items()}
    assert sorted(i for ix in indices.values() for i in ix) == list(range(len(labels)))  # no overlap, full coverage
    assert all(ix == sorted(ix) for ix in indices.values())  # original order kept
    for name, fraction in zip(splits, (0.8, 0.1, 0.1), strict=True):
        counts = splits[name].label_counts()
        assert set(counts) == set("abcde")  # every class in every split, even the one with 3 examples
        for label in "abcd":
            assert abs(counts[label] - fraction * labels.count(label)) <= 1
    assert splits["dev"].source == "mem:dev" and splits["train"].label_counts()["e"] == 1
    again = split_dataset(data, seed=7)
    assert all(again[k].texts == splits[k].texts for k in splits)
    other = split_dataset(data, seed=8)
    assert other["dev"].texts != splits["dev"].texts


def test_split_other_tasks_and_fractions():
    reg = TaskData("regression", [str(i) for i in range(200)], None, [float(i % 37) for i in range(200)], None, "r")
    splits = split_dataset(reg, fractions=(0.5, 0.25, 0.25))
    assert [round(len(s) / 10) for s in splits.values()] == [10, 5, 5]
    assert 10 < sum(splits["test"].labels) / 50 < 26  # every quantile bin represented
    ner_labels = [["O", "B-x"] if i % 4 == 0 else ["O", "O"] for i in range(100)]
    ner = TaskData("ner", [], None, ner_labels, [["w", "w"]] * 100, "n")
    splits = split_dataset(ner)
    assert [sum(t != ["O", "O"] for t in s.labels) for s in splits.values()] == [19, 3, 3]  # 25 with entities
    assert all(s.texts == [] and len(s.words) == len(s) for s in splits.values())
    multi = TaskData("multilabel", ["t"] * 30, None, [["a"], ["a", "b"], [], ["c", "a"], ["b"]] * 6, None, "m")
    assert sum(len(s) for s in split_dataset(multi).values()) == 30
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(make(["a"] * 10), fractions=(0.8, 0.1, 0.2))


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=80), seed=st.integers(0, 2**32 - 1))
def test_split_partitions_any_labels(labels, seed):
    data = make(labels)
    splits = split_dataset(data, seed=seed)
    seen = [int(t.split()[1]) for s in splits.values() for t in s.texts]
    assert sorted(seen) == list(range(len(labels)))
    for s in splits.values():
        assert s.labels == [labels[int(t.split()[1])] for t in s.texts]
    for label, n in Counter(labels).items():
        if n >= 3:
            assert all(label in s.labels for s in splits.values())
    assert {k: s.texts for k, s in split_dataset(data, seed=seed).items()} == {k: s.texts for k, s in splits.items()}


def test_check_known_labels(tmp_path):
    train = make(["a", "b", "a"])
    check_known_labels(train, make(["b", "a"]))
    dev = read_task_file(write(tmp_path, "csv", [{"text": "x", "label": "a"}, {"text": "y", "label": "zebra"},
                                                 {"text": "z", "label": "zebra"}], "dev"), "classification")
    with pytest.raises(InputFileError, match=r"dev\.csv: 1 labels never seen in the training data \(mem\): "
                                             r"'zebra' \(first at line 3\)"):
        check_known_labels(train, dev)
    with pytest.raises(InputFileError, match=r"'c' \(first at example 2\)"):
        check_known_labels(train, make(["a", "c"]))
    ner_train = TaskData("ner", [], None, [["B-x", "O"]], [["a", "b"]], "t")
    ner_dev = TaskData("ner", [], None, [["O"], ["B-y"]], [["a"], ["b"]], "d")
    with pytest.raises(InputFileError, match=r"1 tags never seen .*'B-y' \(first at example 2\)"):
        check_known_labels(ner_train, ner_dev)
    check_known_labels(make([1.0], "regression"), make([2.0], "regression"))


def test_taskdata_checks_itself():
    with pytest.raises(ValueError, match="unknown task"):
        TaskData("ranking", [], None, [], None, "x")
    with pytest.raises(ValueError, match="1 labels for 2 examples"):
        TaskData("classification", ["a", "b"], None, ["x"], None, "x")
    with pytest.raises(ValueError, match="1 pairs for 2 examples"):
        TaskData("pair-classification", ["a", "b"], ["c"], ["x", "y"], None, "x")
    unlabelled = TaskData("classification", ["a", "b", "c"], None, [], None, "input")  # texts to predict on
    assert len(unlabelled) == 3 and unlabelled.subset([2, 0]).texts == ["c", "a"]
    assert unlabelled.subset([1]).labels == [] and unlabelled.label_names() == []
    words = TaskData("ner", [], None, [], [["a", "b"], ["c"]], "input")
    assert len(words) == 2 and words.subset([1]).words == [["c"]]
    assert set(TASKS) == {"classification", "pair-classification", "multilabel", "regression", "ner"}


# ---------------------------------------------------------------------------------------------------------------
# built-in datasets


@pytest.fixture(scope="module")
def builtins() -> dict[str, dict[str, TaskData]]:
    return {name: load_builtin(name) for name in BUILTIN_DATASETS}


def test_builtin_sizes_and_labels(builtins):
    bbc, tweets, wnut = builtins["bbc-news"], builtins["tweet-sentiment"], builtins["wnut16-ner"]
    assert sum(len(s) for s in bbc.values()) == 2127
    assert bbc["train"].label_names() == ["business", "entertainment", "politics", "sports", "tech"]
    assert bbc["dev"].source == "bbc-news:dev" and bbc["train"].where[0] == "business/001.txt"
    assert bbc["train"].texts[0].startswith("Ad sales boost Time Warner profit. Quarterly profits")
    assert 36_500 < sum(len(s) for s in tweets.values()) < 37_500
    assert tweets["test"].label_names() == ["negative", "neutral", "positive"]
    assert sum(len(s) for s in wnut.values()) == 2394
    assert wnut["train"].label_names()[0] == "O" and len(wnut["train"].label_names()) == 21
    for name, splits in builtins.items():
        assert BUILTIN_DATASETS[name][0] == splits["train"].task
        assert len(splits["train"]) > 7 * len(splits["dev"]) > 0
        where = [set(s.where) for s in splits.values()]  # an example's position in its source file is its id
        assert sum(map(len, where)) == sum(map(len, splits.values()))
        assert not (where[0] & where[1] or where[0] & where[2] or where[1] & where[2])
        if name != "wnut16-ner":
            texts = [set(s.texts) for s in splits.values()]  # and the texts themselves were deduplicated
            assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_tweets_are_decoded_and_deduplicated(builtins):
    texts = [t for s in builtins["tweet-sentiment"].values() for t in s.texts]
    assert len(texts) == len(set(texts))
    assert not any("\ufffd" in t for t in texts[:2000]) and any("é" in t or "’" in t for t in texts)


def test_builtin_split_depends_on_seed(builtins):
    other = load_builtin("wnut16-ner", seed=1)
    assert other["dev"].where != builtins["wnut16-ner"]["dev"].where
    assert load_builtin("wnut16-ner")["dev"].where == builtins["wnut16-ner"]["dev"].where


def test_unknown_builtin():
    with pytest.raises(BertkitError, match="unknown dataset 'imdb'; built-in datasets: bbc-news, tweet-sentiment"):
        load_builtin("imdb")


def test_describe(builtins):
    table = describe(builtins["bbc-news"])
    lines = table.splitlines()
    assert lines[0].split() == ["train", "dev", "test", "total"]
    assert lines[1].split()[0] == "examples" and lines[1].split()[-1] == "2,127"
    assert [line.split()[0] for line in lines[2:]] == ["business", "entertainment", "politics", "sports", "tech"]
    ner = describe(builtins["wnut16-ner"]).splitlines()
    assert ner[1].split()[-1] == "2,394" and ner[2].startswith("tokens") and ner[3].startswith("O ")
    reg = TaskData("regression", ["a", "b", "c", "d"], None, [1.0, 2.0, 3.0, 4.0], None, "r")
    assert "label mean" in describe(split_dataset(reg))
