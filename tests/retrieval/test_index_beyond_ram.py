"""An index beyond RAM: the IVF kinds against exact search, memory-mapped loads, deletes and updates for every kind,
compaction, format-1 indexes, building by streaming from embedding parts, the new CLI subcommands, and the bad
input of each (unknown kind, too few vectors to train, unknown ids, corrupt or unfinished parts)."""

import json
import logging

import numpy as np
import pytest

from bertkit.cli.main import main
from bertkit.errors import BertkitError, ConfigError, InputFileError
from bertkit.retrieval import index_kinds
from bertkit.retrieval.index import VectorIndex
from bertkit.retrieval.search import exact_search
from bertkit.utils.atomic import sha256_file

pytestmark = pytest.mark.usefixtures("one_thread", "small_ivf")
KINDS = ["exact", "hnsw", "ivfpq", "ivfsq"]


@pytest.fixture
def small_ivf(monkeypatch):
    """IVF kinds train from 1,000 vectors (10,000 in use: tests stay small), faiss on one thread (two stall on a
    busy 2-core machine)."""
    monkeypatch.setattr(index_kinds, "IVF_MIN_COUNT", 1000)
    faiss = index_kinds.faiss_module()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n: int, dim: int = 16, seed: int = 0, clusters: int = 60, noise: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def index_of(x: np.ndarray, kind: str, prefix: str = "d") -> VectorIndex:
    idx = VectorIndex(x.shape[1], kind=kind)
    idx.add([f"{prefix}{i}" for i in range(len(x))], x, [{"n": i} for i in range(len(x))])
    return idx


def recall(ids: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len({int(i[1:]) for i in row} & set(t)) / len(t) for row, t in zip(ids, truth, strict=True)]))


@pytest.fixture(scope="module")
def data():
    x, queries = np.split(clustered(3200), [3000])
    return x, queries, exact_search(queries, x, 10)[1]


@pytest.mark.parametrize("kind", ["ivfpq", "ivfsq"])
def test_ivf_recall_against_exact_and_refining(data, kind):
    x, queries, truth = data
    idx = index_of(x, kind)
    assert idx.active_kind == kind
    scores, ids = idx.search(queries, 10)
    assert recall(ids, truth) >= 0.95  # measured 0.98 (nprobe 16 of 64 lists misses a few)
    rows = np.array([[int(i[1:]) for i in row] for row in ids])
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, x[rows]), atol=1e-5)  # refined: exact scores
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    idx.refine = 1  # codes alone: PQ is coarse (0.67 here), 8-bit scalar codes hardly (0.97)
    coarse = recall(idx.search(queries, 10)[1], truth)
    assert coarse < 0.8 if kind == "ivfpq" else coarse >= 0.9
    idx.nprobe = 64  # every list: only the codes' error is left
    idx.refine = 10
    assert recall(idx.search(queries, 10)[1], truth) >= 0.99


def test_ivf_on_too_few_vectors_searches_exactly_until_it_can_train(caplog):
    caplog.set_level(logging.INFO, logger="bertkit")
    x = clustered(1200)
    idx = index_of(x[:300], "ivfpq")
    assert idx.active_kind == "exact" and idx.kind == "ivfpq"
    assert "kind ivfpq needs 1000 vectors to train its quantizers; searching the 300 there are exactly" in caplog.text
    assert idx.search(x[7], 1)[1] == [["d7"]]
    idx.add([f"e{i}" for i in range(900)], x[300:])  # crosses 1,000: trains and indexes every slot
    assert idx.active_kind == "ivfpq" and idx._ann.ntotal == 1200
    assert "training ivfpq on 1200 of 1200 vectors" in caplog.text
    assert idx.search(x[1000], 1)[1] == [["e700"]]


def test_unknown_kind_lists_the_kinds(tmp_path, capsys):
    with pytest.raises(ConfigError, match="index kind must be one of auto, exact, hnsw, ivfpq, ivfsq, got 'ivf'"):
        VectorIndex(16, kind="ivf")
    with pytest.raises(SystemExit):
        main(["index", "build", "-i", str(tmp_path / "x.tsv"), "-o", str(tmp_path / "i"), "--kind", "ivf"])
    assert "invalid choice: 'ivf' (choose from 'auto', 'exact', 'hnsw', 'ivfpq', 'ivfsq')" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_memory_mapped_load_gives_the_same_results(tmp_path, data, kind):
    x, queries, _ = data
    idx = index_of(x, kind)
    idx.save(tmp_path / "idx")
    mapped, read = VectorIndex.load(tmp_path / "idx"), VectorIndex.load(tmp_path / "idx", mmap=False)
    assert isinstance(mapped.vectors, np.memmap) and not isinstance(read.vectors, np.memmap)
    if kind == "ivfpq":
        assert index_kinds.is_mapped(mapped._ann) and not index_kinds.is_mapped(read._ann)
    want = idx.search(queries, 10)
    for back in (mapped, read):
        got = back.search(queries, 10)
        assert got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])
        assert back.ids == idx.ids and back.get("d5") == {"n": 5} and "d5" in back and "zz" not in back
        np.testing.assert_array_equal(back.vectors, x)


@pytest.mark.parametrize("kind", KINDS)
def test_deleted_ids_never_come_back(tmp_path, data, kind):
    x = data[0]
    idx = index_of(x, kind)
    gone = [f"d{i}" for i in range(0, 3000, 10)]  # 10%: kept as tombstones at the save
    assert idx.remove(gone) == 300 and len(idx) == 2700 and idx.deleted == 300
    d = tmp_path / "idx"
    idx.save(d)
    back = VectorIndex.load(d)
    assert len(back) == 2700 and back.deleted == 300 and json.loads((d / "index.json").read_text())["deleted"] == 300
    for index in (idx, back):
        found = index.search(x[::10], 5)[1]  # each deleted vector as the query: its own id must not come back
        assert not {i for row in found for i in row} & set(gone)
        assert all(len(row) == 5 for row in found)
        assert "d10" not in index and "d11" in index and len(index.ids) == 2700
        with pytest.raises(KeyError):
            index.get("d10")
    # unknown ids: an error naming them, nothing deleted; or skipped when asked
    with pytest.raises(BertkitError, match=r"2 of the 3 id\(s\) to delete are not in the index: 'd10', 'nope'"):
        back.remove(["d11", "d10", "nope"])
    assert "d11" in back
    assert back.remove(["d11", "nope"], missing="ignore") == 1
    # past a fifth deleted, a save compacts: the slots go, the structure is rebuilt, searches still exclude them
    more = [f"d{i}" for i in range(1, 3000, 4)]
    back.remove([i for i in more if i in back])
    back.save(d)
    manifest = json.loads((d / "index.json").read_text())
    assert manifest["deleted"] == 0 and manifest["slots"] == manifest["count"] == len(back) < 2700
    again = VectorIndex.load(d)
    found = again.search(x, 3)[1]
    assert not {i for row in found for i in row} & (set(gone) | set(more) | {"d11"})
    assert again.search(x[2], 1)[1] == [["d2"]] and again.active_kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_and_update_replace_vectors_and_metadata(tmp_path, data, kind):
    x = data[0]
    idx = index_of(x[:2000], kind)
    # d3 takes d2500's vector; e1 is new
    assert idx.upsert(["d3", "e1"], x[[2500, 2501]], [{"moved": True}, None]) == (1, 1)
    assert idx.get("d3") == {"moved": True} and len(idx) == 2001
    assert idx.search(x[2500], 1)[1] == [["d3"]]
    assert "d3" not in idx.search(x[3], 5)[1][0]  # its old vector is gone
    idx.update(["d4"], metadata=[{"n": 44}])  # metadata only: the vector stays
    assert idx.get("d4") == {"n": 44} and idx.search(x[4], 1)[1] == [["d4"]]
    idx.update(["d5"], vectors=x[2600:2601])  # vector only: the metadata stays
    assert idx.get("d5") == {"n": 5} and idx.search(x[2600], 1)[1] == [["d5"]]
    with pytest.raises(BertkitError, match=r"1 id\(s\) to update are not in the index: 'zz'"):
        idx.update(["d6", "zz"], metadata=[{}, {}])
    assert idx.get("d6") == {"n": 6}
    idx.save(tmp_path / "idx")
    back = VectorIndex.load(tmp_path / "idx")
    assert back.search(x[2500], 1)[1] == [["d3"]] and back.get("d3") == {"moved": True} and len(back) == 2001
    # d3's old slot is still saved (a tombstone) under the same id: lookups, one by one or many at once, find the live
    assert back.remove([f"d{i}" for i in range(100)]) == 100 and len(back) == 1901
    assert not {f"d{i}" for i in range(100)} & {i for row in back.search(x[:100], 3)[1] for i in row}


def test_a_delete_only_save_writes_no_vectors_again(tmp_path, data):
    x = data[0]
    d = tmp_path / "idx"
    index_of(x, "ivfpq").save(d)
    before = json.loads((d / "index.json").read_text())["files"]
    with VectorIndex.edit(d) as idx:
        idx.remove(["d1", "d2"])
    after = json.loads((d / "index.json").read_text())["files"]
    assert {r: f["name"] for r, f in after.items() if r != "deleted"} == {r: f["name"] for r, f in before.items()}
    assert np.load(d / after["deleted"]["name"]).tolist() == [1, 2]
    assert sorted(p.name for p in d.iterdir()) == sorted([*(f["name"] for f in after.values()), "index.json"])
    with VectorIndex.edit(d, compact=True) as idx:  # compaction rewrites all
        pass
    files = json.loads((d / "index.json").read_text())["files"]
    assert "deleted" not in files and files["vectors"]["name"] != before["vectors"]["name"]
    assert len(VectorIndex.load(d)) == 2998


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_an_index_of_format_1_still_loads_and_is_migrated_by_its_next_save(tmp_path, kind):
    x = clustered(50)
    d = tmp_path / "old"
    d.mkdir()
    files = {}
    np.save(d / "vectors-0000abcd.npy", x)
    (d / "items-0000abcd.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "metadata": {"n": i}}) + "\n"
                                                    for i in range(50)))
    roles = {"vectors": "vectors-0000abcd.npy", "items": "items-0000abcd.jsonl"}
    library = {"name": "torch", "version": "2"}
    if kind == "hnsw":
        graph = index_kinds.new_hnsw(16)
        graph.add(x)
        index_kinds.write_ann(graph, d / "hnsw-0000abcd.faiss")
        roles["hnsw"] = "hnsw-0000abcd.faiss"
        library = {"name": "faiss-cpu", "version": "1.8.0", "M": 16, "ef_construction": 128, "ef_search": 48}
    for role, name in roles.items():
        files[role] = {"name": name, "bytes": (d / name).stat().st_size, "sha256": sha256_file(d / name)}
    (d / "index.json").write_text(json.dumps({"format": "bertkit-index", "format_version": 1, "model": None,
                                              "dim": 16, "count": 50, "kind": kind, "requested_kind": kind,
                                              "library": library, "files": files}))
    old = VectorIndex.load(d)
    assert old.ids == [f"d{i}" for i in range(50)] and old.get("d7") == {"n": 7} and old.active_kind == kind
    assert old.search(x[7], 1)[1] == [["d7"]] and (kind == "exact" or old.ef_search == 48)
    old.remove(["d1"])
    old.save(d)
    manifest = json.loads((d / "index.json").read_text())
    assert manifest["format_version"] == 2 and manifest["files"]["items"]["name"].endswith(".arrow")
    assert not list(d.glob("*.jsonl")) and not list(d.glob("*0000abcd*"))
    back = VectorIndex.load(d)
    assert len(back) == 49 and back.get("d7") == {"n": 7} and "d1" not in back


def test_a_newer_format_is_refused(tmp_path):
    index_of(clustered(20), "exact").save(tmp_path / "idx")
    path = tmp_path / "idx" / "index.json"
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 3'))
    with pytest.raises(InputFileError, match="index format 3 is newer than this bertkit reads"):
        VectorIndex.load(tmp_path / "idx")


# ---- embedding parts -------------------------------------------------------------------------------------------
def write_parts(d, x, texts=None, part_rows=400, shard=(0, 1), **settings):
    """An embedding-parts directory as ``bertkit embed`` writes it (``distributed/parts.py``), without a model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True)
    parts = {}
    for k, start in enumerate(range(0, len(x), part_rows)):
        if k % shard[1] != shard[0]:
            continue
        rows = x[start:start + part_rows]
        columns = {"row": pa.array(np.arange(start, start + len(rows), dtype=np.int64)),
                   "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), x.shape[1])}
        if texts is not None:
            columns["text"] = pa.array(texts[start:start + part_rows])
        name = f"part-{k:05d}.parquet"
        pq.write_table(pa.table(columns), d / name)
        parts[str(k)] = {"file": name, "first_row": start, "rows": len(rows), "sha256": sha256_file(d / name)}
    meta = {"model": "tiny", "model_directory": None, "pooling": ["mean"], "normalize": True, "prompt": "passage: ",
            "max_length": 128, "with_text": texts is not None, "part_rows": part_rows, "shard": list(shard), **settings}
    (d / "manifest.json").write_text(json.dumps({"format": "bertkit-embeddings", "version": 1, "settings": meta,
                                                 "complete": True, "parts": parts, "rows": len(x),
                                                 "dim": x.shape[1]}))
    return d


@pytest.mark.parametrize("kind", ["exact", "ivfpq"])
def test_from_parts_streams_one_or_several_shards(tmp_path, data, kind):
    x, queries, truth = data
    texts = [f"text {i}" for i in range(len(x))]
    shards = [write_parts(tmp_path / f"s{i}", x, texts, shard=(i, 2)) for i in range(2)]
    idx = VectorIndex.from_parts(shards, tmp_path / "idx", kind)
    assert len(idx) == 3000 and idx.active_kind == kind and isinstance(idx.vectors, np.memmap)
    assert sorted(idx.ids, key=int) == [str(i) for i in range(3000)]  # ids: the row numbers
    assert idx.get("2999") == {"text": "text 2999"}
    np.testing.assert_array_equal(idx.vectors[[idx.ids.index("401")]], x[[401]])
    assert idx.model == {"name": "tiny", "directory": None, "pooling": ["mean"], "normalized": True,
                         "max_length": 128, "document_prompt": "passage: ", "query_prompt": None}
    found = idx.search(queries, 10)[1]
    assert recall([[f"d{i}" for i in row] for row in found], truth) >= (1.0 if kind == "exact" else 0.95)
    # and the index can grow from more parts of the same model, and replace rows
    more = write_parts(tmp_path / "more", clustered(5, seed=3))
    assert idx.add_parts(more, upsert=True) == (0, 5)
    assert idx.search(clustered(5, seed=3)[2], 1)[1] == [["2"]] and len(idx) == 3000


def test_bad_parts_are_named(tmp_path, caplog):
    x = clustered(900)
    d = write_parts(tmp_path / "p", x)
    part = d / "part-00001.parquet"
    raw = part.read_bytes()
    part.write_bytes(raw[:-10] + b"\0" * 10)
    with pytest.raises(BertkitError, match=r"part-00001\.parquet: its checksum differs from the manifest's"):
        VectorIndex.from_parts(d, tmp_path / "idx")
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").iterdir())  # nothing left behind
    part.write_bytes(raw)
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(BertkitError, match="has not finished"):
        VectorIndex.from_parts(d, tmp_path / "idx")
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BertkitError, match="hold the same rows"):  # one directory given twice
        VectorIndex.from_parts([d, d], tmp_path / "idx")
    other = write_parts(tmp_path / "q", x, prompt="query: ")
    with pytest.raises(BertkitError, match=r"different settings \(prompt\)"):
        VectorIndex.from_parts([d, other], tmp_path / "idx")
    with pytest.raises(BertkitError, match=r"no manifest\.json"):
        VectorIndex.from_parts(tmp_path, tmp_path / "idx")
    loose = write_parts(tmp_path / "loose", 3 * x)  # not unit-norm: normalized, with a warning
    idx = VectorIndex.from_parts(loose, tmp_path / "idx")
    np.testing.assert_allclose(idx.vectors, x, atol=1e-6)
    assert "not unit-norm; normalizing" in caplog.text
    with pytest.raises(BertkitError, match=r"made with .other. \(pooling \[.cls.\].*their model, pooling differ"):
        idx.add_parts(write_parts(tmp_path / "m", x, model="other", pooling=["cls"]))


def test_a_failed_build_from_parts_leaves_the_old_index(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    index_of(clustered(30), "exact").save(d)
    before = sorted(p.name for p in d.iterdir())
    parts = write_parts(tmp_path / "p", clustered(1200))

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(index_kinds, "train_ivf", boom)
    with pytest.raises(OSError, match="disk full"):
        VectorIndex.from_parts(parts, d, "ivfsq")
    assert sorted(p.name for p in d.iterdir()) == before and len(VectorIndex.load(d)) == 30


# ---- the command line ------------------------------------------------------------------------------------------
def test_cli_parts_build_search_upsert_delete_compact(tmp_path, tiny_dir, capsys):
    from bertkit.distributed.parts import embed_to_parts
    from bertkit.encoder import load

    texts = ["cats purr on the sofa", "dogs bark at the postman", "the stock market fell sharply",
             "rain falls on the river bank", "the striker scored twice"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    enc = load(tiny_dir)
    embed_to_parts(enc, [tmp_path / "in.txt"], tmp_path / "parts", part_rows=2, with_text=True, prompt="doc: ")
    out = tmp_path / "idx"
    assert main(["index", "build", "-i", str(tmp_path / "parts"), "-o", str(out), "--query-prompt", "q: "]) == 0
    printed = capsys.readouterr().out
    assert "documents  5 (5 added" in printed and "kind       exact" in printed
    index = VectorIndex.load(out)
    assert index.model["document_prompt"] == "doc: " and index.model["query_prompt"] == "q: "
    assert main(["index", "search", str(out), "the stock market fell sharply", "-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    want = index.search(enc.embed(["the stock market fell sharply"], normalize=True, prompt="q: "), 2)
    assert [r["id"] for r in result["results"]] == want[1][0]
    assert result["results"][0]["metadata"]["text"] in texts
    assert main(["index", "build", str(tiny_dir), "-i", str(tmp_path / "parts"), "-o", str(tmp_path / "x")]) == 2
    assert "embedding parts record how they were made" in capsys.readouterr().err

    assert main(["index", "delete", str(out), "0", "3"]) == 0
    assert "deleted    2 of 2" in capsys.readouterr().out
    assert main(["index", "delete", str(out), "0", "nope"]) == 2
    err = capsys.readouterr().err
    assert "2 of the 2 id(s) to delete are not in the index: '0', 'nope'; nothing was deleted" in err
    (tmp_path / "ids.txt").write_text("1\nnope\n")
    assert main(["index", "delete", str(out), "--ids-file", str(tmp_path / "ids.txt"), "--missing", "ignore"]) == 0
    assert "deleted    1 of 2" in capsys.readouterr().out
    assert VectorIndex.load(out).ids == ["2", "4"]
    assert main(["index", "delete", str(out)]) == 2
    assert "no ids to delete" in capsys.readouterr().err

    (tmp_path / "up.tsv").write_text("2\tthe market rose\nnew\tbirds sing at dawn\n")
    assert main(["index", "upsert", str(out), "-i", str(tmp_path / "up.tsv")]) == 0
    assert "documents  3 (1 added, 1 replaced)" in capsys.readouterr().out
    index = VectorIndex.load(out)
    assert index.get("2") == {"text": "the market rose"}
    assert index.deleted == 0  # 4 of 7 slots deleted or replaced (>= a fifth): that save compacted
    np.testing.assert_allclose(index.vectors[index.ids.index("new")],
                               enc.embed(["birds sing at dawn"], normalize=True, prompt="doc: ")[0], atol=1e-5)
    with VectorIndex.edit(out, compact=False) as index:
        index.remove(["4"])
    assert VectorIndex.load(out).deleted == 1
    assert main(["index", "compact", str(out)]) == 0
    assert "removed    1 deleted slot(s)" in capsys.readouterr().out
    index = VectorIndex.load(out)
    assert sorted(index.ids) == ["2", "new"] and index.deleted == 0 and len(index.vectors) == 2
    assert main(["index", "upsert", str(tmp_path / "none"), "-i", str(tmp_path / "up.tsv")]) == 2
    assert "no index at" in capsys.readouterr().err and not (tmp_path / "none").exists()
