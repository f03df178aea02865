"""Streaming, resumable, sharded embedding into Parquet parts (issue 18, item 1): the parts equal the in-memory
path, a failed run resumes to the uninterrupted result redoing at most one part, shards split the parts, and bad
input (another model or setting on --resume, a corrupt part, a bad --shard) is named."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bertkit
from bertkit.cli.main import main
from bertkit.data.text_stream import count_texts, expand_inputs, iter_texts
from bertkit.distributed import parts as P
from bertkit.errors import ConfigError, InputFileError

WORDS = "the river bank loan fox market rain school music minister water striker film".split()


def corpus(tmp_path, n=23):
    """n texts over three files and formats, one a CSV cell with a line break."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(n)]
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("\n".join(texts[:9]) + "\n")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[9:16])))
    rows = texts[16:]
    rows[0] = rows[0] + "\nsecond line"
    texts[16] = rows[0]
    (d / "c.csv").write_text("text\n" + "".join('"' + t + '"\n' for t in rows))
    return d, texts


@pytest.fixture(scope="module")
def enc(tiny_dir):
    return bertkit.load(tiny_dir)


def test_the_stream_reads_every_format_in_order(tmp_path):
    d, texts = corpus(tmp_path)
    files = expand_inputs([d])
    assert [f.name for f in files] == ["a.txt", "b.jsonl", "c.csv"]
    assert list(iter_texts(files)) == texts and count_texts(files) == len(texts)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts[:5]}), tmp_path / "p.parquet")
    assert list(iter_texts(expand_inputs([tmp_path / "p.parquet"]))) == texts[:5]
    assert list(iter_texts(expand_inputs([str(d / "*.txt")]))) == texts[:9]
    with pytest.raises(InputFileError, match="matches no supported input file"):
        expand_inputs([str(tmp_path / "*.md")])


def test_parts_equal_the_in_memory_embeddings(tmp_path, enc):
    d, texts = corpus(tmp_path)
    manifest = P.embed_to_parts(enc, [d], tmp_path / "out", part_rows=5, with_text=True)
    assert manifest["complete"] and manifest["rows"] == len(texts) and len(manifest["parts"]) == 5
    rows, vectors = P.read_parts(tmp_path / "out")
    assert rows.tolist() == list(range(len(texts)))
    np.testing.assert_allclose(vectors, enc.embed(texts), atol=1e-5)


def test_shards_split_the_parts_and_read_back_together(tmp_path, enc):
    d, _ = corpus(tmp_path)
    P.embed_to_parts(enc, [d], tmp_path / "all", part_rows=4)
    for i in range(3):
        P.embed_to_parts(enc, [d], tmp_path / f"s{i}", part_rows=4, shard=f"{i}/3")
    assert sorted(P.read_manifest(tmp_path / "s1")["parts"]) == ["1", "4"]
    rows, vectors = P.read_parts(*(tmp_path / f"s{i}" for i in range(3)))
    want_rows, want = P.read_parts(tmp_path / "all")
    assert np.array_equal(rows, want_rows) and np.array_equal(vectors, want)


def test_a_failed_run_resumes_to_the_uninterrupted_result(tmp_path, enc, monkeypatch):
    d, _ = corpus(tmp_path)
    P.embed_to_parts(enc, [d], tmp_path / "clean", part_rows=5)
    write = P._write_part
    calls = []

    def dies_on_the_third(out, k, *args):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would: part 2 is never entered in the manifest
        return write(out, k, *args)
    monkeypatch.setattr(P, "_write_part", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        P.embed_to_parts(enc, [d], tmp_path / "out", part_rows=5)
    monkeypatch.setattr(P, "_write_part", write)
    assert sorted(P.read_manifest(tmp_path / "out")["parts"]) == ["0", "1"]
    with pytest.raises(Exception, match="not empty; resume the run with --resume"):
        P.embed_to_parts(enc, [d], tmp_path / "out", part_rows=5)
    before = (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns
    P.embed_to_parts(enc, [d], tmp_path / "out", part_rows=5, resume=True)
    assert (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns == before  # kept, not redone
    assert all(np.array_equal(a, b) for a, b in zip(P.read_parts(tmp_path / "out"), P.read_parts(tmp_path / "clean"),
                                                    strict=True))


def test_resume_refuses_other_settings_and_redoes_a_corrupt_part(tmp_path, enc, caplog):
    d, _ = corpus(tmp_path)
    out = tmp_path / "out"
    P.embed_to_parts(enc, [d], out, part_rows=5)
    with pytest.raises(ConfigError, match=r"pooling: \['mean'\] there, 'cls' now"):
        P.embed_to_parts(enc, [d], out, part_rows=5, pooling="cls", resume=True)
    with pytest.raises(ConfigError, match="part_rows: 5 there, 6 now"):
        P.embed_to_parts(enc, [d], out, part_rows=6, resume=True)
    want = P.read_parts(out)
    part = out / "part-00003.parquet"
    part.write_bytes(part.read_bytes()[:100])  # truncated
    with pytest.raises(Exception, match="checksum differs"):
        P.read_parts(out)
    P.embed_to_parts(enc, [d], out, part_rows=5, resume=True)
    assert "part-00003.parquet: missing or corrupt" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(P.read_parts(out), want, strict=True))


@pytest.mark.parametrize("spec", ["1", "2/2", "a/b", "-1/3", "0/0"])
def test_a_bad_shard_is_named(spec):
    with pytest.raises(ConfigError, match="--shard"):
        P.parse_shard(spec)


def test_cli_streams_into_a_directory_and_resumes_after_kill_9(tmp_path, tiny_dir, enc):
    d, texts = corpus(tmp_path, n=2000)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bertkit.cli.main", "embed", str(tiny_dir), "-i", str(d), "-o", str(out),
           "--part-rows", "10"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "part-00002.parquet").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(P.read_manifest(out)["parts"])
    assert 0 < done < 200  # killed part way
    assert main(["embed", str(tiny_dir), "-i", str(d), "-o", str(out), "--part-rows", "10", "--resume"]) == 0
    rows, vectors = P.read_parts(out)
    assert rows.tolist() == list(range(2000))
    np.testing.assert_allclose(vectors, enc.embed(texts), atol=1e-5)
    assert main(["embed", str(tiny_dir), "-i", str(d), "-o", str(out), "--shard", "3/2"]) == 2
