"""``bertkit index build --long-inputs chunk``: a long document is indexed as the length-weighted mean of its
windows, the choice is recorded, and appends embed the same way."""

import json

import numpy as np
import pytest

from bertkit.cli.main import main
from bertkit.encoder import load
from bertkit.retrieval.index import VectorIndex

LONG = " ".join(["the central bank raised interest rates again and stocks fell"] * 30)


def test_index_build_chunk(tmp_path, tiny_dir, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in [{"_id": "short", "text": "cats purr on the sofa"},
                                                            {"_id": "long", "text": LONG}]))
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out), "--long-inputs", "chunk",
                 "--stride", "16"]) == 0
    index = VectorIndex.load(out)
    assert index.model["long_inputs"] == "chunk" and index.model["stride"] == 16
    enc = load(str(tiny_dir))
    want = enc.embed(["cats purr on the sofa", LONG], long_inputs="chunk", stride=16, normalize=True)
    np.testing.assert_allclose(index.vectors, want, atol=1e-6)
    assert not np.allclose(index.vectors[1], enc.embed([LONG])[0], atol=1e-3)  # not the truncated document
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "long2", "text": LONG}) + "\n")
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append"]) == 0  # read as recorded
    np.testing.assert_allclose(VectorIndex.load(out).vectors[2], want[1], atol=1e-6)
    capsys.readouterr()
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append", "--stride", "4"]) == 2
    assert "read as the index records (chunk)" in capsys.readouterr().err


def test_passage_index_returns_each_document_once(tmp_path, tiny_dir, capsys):
    other = " ".join(["dogs bark at the postman in the morning"] * 40)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in [{"_id": "short", "text": "cats purr on the sofa"},
                                                            {"_id": "long", "text": LONG, "lang": "en"},
                                                            {"_id": "other", "text": other}]))
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out), "--passages", "windows",
                 "--stride", "16"]) == 0
    enc = load(str(tiny_dir))
    vectors, owner, spans = enc.embed_windows(["cats purr on the sofa", LONG, other], stride=16)
    assert "passages   " in capsys.readouterr().out
    index = VectorIndex.load(out)
    assert len(index) == len(owner) > 3 and index.model["passages"] == "windows"
    np.testing.assert_allclose(index.vectors, vectors, atol=1e-6)
    assert index.ids[:3] == ["short#0", "long#0", "long#1"]
    meta = index.get("long#1")
    assert meta["document"] == "long" and meta["window"] == 1 and meta["span"] == list(spans[2])
    assert meta["lang"] == "en" and meta["text"].startswith(enc.tokenizer.decode(
        enc.tokenizer.encode_plain([LONG])[0][spans[2][0]:spans[2][0] + 3]))
    assert main(["index", "search", str(out), "stocks fell after the bank raised rates", "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert sorted(r["id"] for r in results) == ["long", "other", "short"]  # each document once
    q = enc.embed(["stocks fell after the bank raised rates"])[0]
    for r in results:  # by its best window
        own = [w for w, o in enumerate(owner) if ["short", "long", "other"][o] == r["id"]]
        assert r["score"] == pytest.approx(max(float(vectors[w] @ q) for w in own), abs=1e-5)
        assert r["metadata"]["document"] == r["id"]
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "new", "text": "birds"}) + "\n")
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append"]) == 2
    assert "holds passages" in capsys.readouterr().err


def test_index_build_records_the_pooling_and_prompts_it_was_given(tmp_path, tiny_dir):
    """--pooling, --doc-prompt and --query-prompt reach the index (they were once parsed and dropped)."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n"
                            for i, t in enumerate(["cats purr on the sofa", "stocks fell again"])))
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out), "--pooling", "cls",
                 "--doc-prompt", "passage: ", "--query-prompt", "query: "]) == 0
    index = VectorIndex.load(out)
    assert index.model["pooling"] == ["cls"]
    assert index.model["document_prompt"] == "passage: " and index.model["query_prompt"] == "query: "
    enc = load(str(tiny_dir))
    want = enc.embed(["passage: cats purr on the sofa", "passage: stocks fell again"], pooling="cls", normalize=True)
    np.testing.assert_allclose(index.vectors, want, atol=1e-6)
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(tmp_path / "w"), "--passages",
                 "windows", "--pooling", "cls"]) == 2
