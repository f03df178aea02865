"""Retrieval files: ids, duplicates and unknown ids are errors naming file and line; the BBC benchmark split."""

import json

import pytest

from bertkit.errors import InputFileError
from bertkit.retrieval.data import bbc_retrieval, load_retrieval_files


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def files(tmp_path, docs=None, qrels=None):
    q = write(tmp_path, "queries.jsonl", [json.dumps({"_id": "q1", "text": "cats"}),
                                          json.dumps({"_id": "q2", "text": "dogs"})])
    d = write(tmp_path, "corpus.jsonl", docs or [json.dumps({"_id": "d1", "title": "Cats", "text": "meow"}),
                                                 json.dumps({"_id": "d2", "text": "woof"})])
    r = write(tmp_path, "qrels.tsv", qrels or ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t1"])
    return q, d, r


def test_reads_beir_layout(tmp_path):
    data = load_retrieval_files(*files(tmp_path))
    assert data.docs["d1"] == "Cats. meow" and data.qrels == {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}


def test_duplicate_unknown_and_missing_ids_are_named(tmp_path):
    dup = [json.dumps({"_id": "d1", "text": "a"}), json.dumps({"_id": "d1", "text": "b"})]
    with pytest.raises(InputFileError, match=r"corpus.jsonl, line 2: duplicate document id 'd1'"):
        load_retrieval_files(*files(tmp_path, docs=dup))
    with pytest.raises(InputFileError, match=r"qrels.tsv, line 1: unknown document id 'd9'"):
        load_retrieval_files(*files(tmp_path, qrels=["q1\td9\t1"] * 2))
    with pytest.raises(InputFileError, match=r"line 1: unknown query id 'q7'"):
        load_retrieval_files(*files(tmp_path, qrels=["q7\td1\t1"]))
    with pytest.raises(InputFileError, match=r"line 1: missing field '_id'"):
        load_retrieval_files(*files(tmp_path, docs=[json.dumps({"text": "x"})]))
    with pytest.raises(InputFileError, match=r"line 3: score 'high' is not a number"):
        load_retrieval_files(*files(tmp_path, qrels=["h\th\th", "q1\td1\t1", "q2\td2\thigh"]))


def test_bbc_benchmark_splits_are_disjoint_and_deterministic():
    test, train = bbc_retrieval("test"), bbc_retrieval("train")
    assert not set(test.queries) & set(train.queries)
    assert test.docs.keys() == train.docs.keys() and len(test.docs) == 2092
    assert bbc_retrieval("test").queries == test.queries
    q = next(iter(test.qrels))
    assert all(test.docs[d] for d in test.qrels[q])


@pytest.mark.usefixtures("one_thread")
def test_evaluate_retrieval_cli_on_files(tmp_path, minilm_dir, capsys):
    from bertkit.cli.main import main
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path / "model", minilm_dir)
    q, d, r = files(tmp_path)
    assert main(["evaluate-retrieval", str(tmp_path / "model"), "--queries", str(q), "--docs", str(d),
                 "--qrels", str(r), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["queries"] == 2 and out["recall@100"] == 1.0  # two documents: both always in the top 100
    assert 0.5 <= out["mrr@10"] <= 1.0
    assert main(["evaluate-retrieval", str(tmp_path / "model"), "--queries", str(q)]) == 2
    assert "all three" in capsys.readouterr().err
