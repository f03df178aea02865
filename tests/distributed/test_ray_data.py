"""Embedding on Ray Data (issue 18, item 2): ``embed_dataset`` gives the single-process engine's vectors in the
dataset's row order, ``bertkit embed --ray`` reads and writes with Ray Data into a Parquet dataset with a manifest
(on the caller's Ray, left running), and bad input (a dead --ray-address, options Ray cannot honour, no Ray
installed) fails fast with a message naming it.

Ray costs seconds per pipeline on 2 cores (every actor imports torch and loads the model), so there are two: one
``embed_dataset``, one CLI run, both on the session's one local instance (``ray_local``)."""

import json
import socket
import sys
import time

import numpy as np
import pytest

from bertkit.cli.main import main
from bertkit.distributed import embed_dataset, read_ray_output
from bertkit.distributed.ray_data import bertkit_cause, text_of
from bertkit.errors import InputFileError

WORDS = "the river bank loan fox market rain school music minister water striker film".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """n texts of 1 to 60 words: lengths vary, so the engine's length-sorted batches differ from the input order."""
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for i in range(n)]


def test_embed_dataset_equals_the_single_process_engine(ray_local, minilm):
    import pyarrow as pa

    texts = corpus(160)
    ds = ray_local.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=8)
    # two actors and batches of 16: ten batches that finish in any order, and must come back in the dataset's
    out = embed_dataset(ds, "all-MiniLM-L6-v2", workers=2, threads_per_worker=1, batch_size=16)
    table = pa.concat_tables(list(out.iter_batches(batch_format="pyarrow", batch_size=None)))
    assert table.column("id").to_pylist() == list(range(len(texts)))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    emb = table.column("embedding").combine_chunks()
    got = emb.flatten().to_numpy().reshape(len(emb), -1)
    diff = float(np.abs(got - minilm.embed(texts, progress=False)).max())
    print(f"embed_dataset vs Encoder.embed: max abs diff {diff:.3g}")  # shown with -s
    assert diff <= 1e-5


@pytest.mark.slow  # a second Ray pipeline: ~40 s on 2 cores (make test-slow; CI runs it)
def test_cli_ray_writes_a_parquet_dataset_in_row_order(ray_local, minilm, tmp_path, capsys):
    import pyarrow.parquet as pq

    texts = corpus(90, seed=1)
    d = tmp_path / "in"
    d.mkdir()
    # two files in an order their names do not sort in, a blank line (skipped, as the streamed reader does); one
    # actor of 2 threads holds both CPUs of the instance: reading and writing must not wait for one
    (d / "b.jsonl").write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in texts[:50]) + "\n")
    (d / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[50:]))
    out = tmp_path / "out"
    args = ["embed", "all-MiniLM-L6-v2", "-i", str(d / "b.jsonl"), str(d / "a.jsonl"), "-o", str(out), "--ray",
            "--workers", "1", "--threads", "2", "--text-column", "body", "--with-text", "--part-rows", "40"]
    assert main(args) == 0
    assert ray_local.is_initialized()  # the command used the caller's Ray and left it up

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "bertkit-ray-embeddings" and manifest["rows"] == len(texts)
    assert manifest["settings"]["model"] == "all-MiniLM-L6-v2" and manifest["dim"] == 384
    starts = [e["first_row"] for e in manifest["files"]]
    assert starts == list(np.cumsum([0] + [e["rows"] for e in manifest["files"]])[:-1])
    assert all(e["rows"] <= 40 for e in manifest["files"])
    stored = [t for e in manifest["files"] for t in pq.read_table(out / e["file"]).column("text").to_pylist()]
    assert stored == texts
    diff = float(np.abs(read_ray_output(out) - minilm.embed(texts, progress=False)).max())
    with capsys.disabled():
        print(f"bertkit embed --ray vs Encoder.embed: max abs diff {diff:.3g}")
    assert diff <= 1e-5

    capsys.readouterr()
    assert main(args) == 2  # no resume on Ray: a second run into the same directory needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_fails_fast_without_starting_ray(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    import pyarrow as pa

    # whether or not another test's Ray is up in this process, the address must be probed, and ray.init never
    # reached: on a dead address it retries for minutes
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init reached with a dead address"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    (tmp_path / "u.jsonl").write_text('{"text": "three"}\n')
    base = ["embed", "all-MiniLM-L6-v2", "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "out"), "--ray"]

    def error(*extra: str) -> str:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        return capsys.readouterr().err

    t0 = time.perf_counter()
    err = error("--ray-address", f"127.0.0.1:{closed_port()}")
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"dead --ray-address refused in {elapsed:.2f} s")
    assert "no Ray cluster at" in err and "ray start --head" in err and elapsed < 30
    assert "is not HOST:PORT" in error("--ray-address", "headnode:port")
    assert "--resume does not apply to --ray" in error("--resume")
    assert "--shard does not apply to --ray" in error("--shard", "0/2")
    assert "give --output DIR" in error("-o", str(tmp_path / "v.npy"))
    assert "one input format per run" in error("-i", str(tmp_path))
    capsys.readouterr()
    assert main(["embed", "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "v.npy"), "--workers", "2"]) == 2
    assert "--workers applies to --ray" in capsys.readouterr().err

    # a bad row in a Ray task: its own message, named file, from under Ray's wrapping (which keeps only the text)
    with pytest.raises(InputFileError, match=r"u\.jsonl: no column/field 'body' \(there: text\)"):
        text_of(pa.table({"text": ["a"], "path": [str(tmp_path / "u.jsonl")]}), "body")
    wrapped = RuntimeError("ray::MapWorker()\nTraceback ...\nbertkit.errors.InputFileError: u.jsonl: 1 row(s) without "
                           "'text'\n\nThe above exception was the direct cause of the following exception:\n...")
    assert str(bertkit_cause(wrapped)) == "u.jsonl: 1 row(s) without 'text'"
    assert bertkit_cause(RuntimeError("a Ray bug")) is None

    for name in ("ray", "ray.data"):  # as if the extra were not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert "pip install 'bertkit[ray]'" in error()
