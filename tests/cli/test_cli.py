"""The CLI end to end on small files: in-process through main(), and once through the console script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertkit.cli.main import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 6 and info["hidden_size"] == 384 and info["execution_path"] == "unpadded"


def test_info_text(capsys):
    assert main(["info", "all-MiniLM-L6-v2"]) == 0
    out = capsys.readouterr().out
    assert "22,713,216" in out and "execution path" in out


def test_embed_txt_to_npy(tmp_path, minilm):
    texts = ["the first line", "", "a third line"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert main(["embed", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.npy")]) == 0
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (3, 384) and np.abs(got - minilm.embed(texts)).max() <= 1e-6


def test_embed_jsonl_and_csv_to_parquet(tmp_path, minilm):
    (tmp_path / "in.jsonl").write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    assert main(["embed", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "a.parquet"), "--with-text"]) == 0
    t = pq.read_table(tmp_path / "a.parquet")
    assert t.column("text").to_pylist() == ["alpha", "beta"]
    (tmp_path / "in.csv").write_text("id,sentence\n1,alpha\n2,beta\n")
    assert main(["embed", "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "b.npy"),
                 "--text-column", "sentence", "--pooling", "cls", "--no-normalize"]) == 0
    assert np.abs(np.load(tmp_path / "b.npy") - minilm.embed(["alpha", "beta"], pooling="cls", normalize=False)
                  ).max() <= 1e-6


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("bad.txt", b"ok\n\xff\xfe\n", [], "bad.txt, line 2: not valid UTF-8"),
        ("bad.jsonl", b'{"text": "a"}\n{broken\n', [], "bad.jsonl, line 2: not valid JSON"),
        ("bad.jsonl", b'{"body": "a"}\n', [], "bad.jsonl, line 1: missing field 'text'"),
        ("bad.csv", b"a,b\n1,2\n", ["--text-column", "sentence"], "bad.csv, line 1: no column 'sentence'"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, name, content, extra, message):
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "out.npy"
    assert main(["embed", "-i", str(tmp_path / name), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_model_and_output(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("x\n")
    assert main(["embed", str(tmp_path / "nope"), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")]) == 2
    assert "no such local directory" in capsys.readouterr().err
    assert main(["embed", "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.csv")]) == 2
    assert "unsupported output format" in capsys.readouterr().err


def test_console_script_end_to_end(tmp_path):
    exe = shutil.which("bertkit", path=str(Path(sys.executable).parent))
    assert exe, "the bertkit console script is installed next to the interpreter"
    (tmp_path / "in.txt").write_text("hello world\nsecond line\n")
    r = subprocess.run([exe, "embed", "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "execution path: unpadded" in r.stderr
    assert np.load(tmp_path / "o.npy").shape == (2, 384)
    r = subprocess.run([sys.executable, "-m", "bertkit.cli.main", "info", "--json"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["vocab_size"] == 30522


def test_demo_runs_on_a_slice(capsys, tmp_path):
    args = ["demo", "--limit", "60", "-k", "2", "--query", "oil prices", "--skip-finetune", "--index",
            str(tmp_path / "index"), "--reranker", str(tmp_path / "no-reranker")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "query: oil prices" in out and "tokens/s" in out and "  1. [" in out and "Re-ranking" not in out
    assert (tmp_path / "index" / "index.json").is_file()
    assert main(args) == 0  # the second run searches the saved index
    again = capsys.readouterr().out
    assert "built before" in again and again.split("query:")[1] == out.split("query:")[1]


def test_demo_reranks_where_a_reranker_exists(capsys, tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    from tests.conftest import copy_tokenizer

    rr = tmp_path / "reranker"  # an untrained cross-encoder: the order is arbitrary but must come from it
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128, num_labels=1)
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(rr)
    copy_tokenizer(minilm_dir, rr)
    assert main(["demo", "--limit", "30", "-k", "2", "--query", "oil prices", "--skip-finetune", "--index",
                 str(tmp_path / "index"), "--reranker", str(rr)]) == 0
    out = capsys.readouterr().out
    assert "Re-ranking the top 20" in out and "(its logit)" in out

    from bertkit.retrieval.index import VectorIndex
    from bertkit.retrieval.reranker import Reranker

    idx = VectorIndex.load(tmp_path / "index")
    _, found = idx.search_text(idx.load_encoder(), ["oil prices"], 20)
    best = Reranker.from_pretrained(rr).rank("oil prices", [idx.document(i) for i in found[0]], top_k=1)[0][0]
    assert idx.get(found[0][best])["title"] in out.split("  1. [")[1].splitlines()[0]


def test_demo_finetune_part_on_a_tiny_model(minilm_dir, tmp_path, capsys, one_thread):
    """The fine-tuning half of the demo: budgeted run, test accuracy, confusion matrix, headlines."""
    from tests.conftest import save_tiny_hf_model

    save_tiny_hf_model(tmp_path / "tiny", minilm_dir)
    assert main(["demo", "--skip-search", "--model", str(tmp_path / "tiny"), "--time-budget", "3s",
                 "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "stopped: time budget" in out and "test accuracy" in out
    assert "confusion matrix" in out and out.count("Central bank raises interest rates") == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
