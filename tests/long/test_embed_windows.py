"""Embeddings of long texts: a short text keeps its truncation embedding, a long one is the length-weighted mean of
its windows (normalized after averaging), every window is available for passage retrieval; the CLI flags."""

import json

import numpy as np
import pytest

from bertkit.cli.main import main
from bertkit.data.tasks import read_task_file
from bertkit.data.windows import window_spans
from bertkit.encoder import load
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import task_model

SHORT = ["a short one", "another short text"]
LONG = " ".join(["the central bank raised interest rates again and stocks fell"] * 8)


@pytest.fixture(scope="module")
def enc(tiny_dir):
    e = load(str(tiny_dir))
    e.max_length = 32
    return e


def test_short_texts_keep_their_truncation_embedding(enc):
    assert np.array_equal(enc.embed(SHORT), enc.embed(SHORT, long_inputs="chunk", stride=3))
    assert np.array_equal(enc.encode(SHORT), enc.encode(SHORT, long_inputs="chunk"))


def test_a_long_text_is_the_weighted_mean_of_its_windows(enc):
    stride = 6
    vectors, owner, spans = enc.embed_windows([SHORT[0], LONG], stride=stride)
    raw, _, _ = enc.embed_windows([SHORT[0], LONG], stride=stride, normalize=False)
    n = len(enc.tokenizer.encode_plain([LONG])[0])
    assert spans[1:] == window_spans(n, enc.max_length - 2, stride) and len(spans) > 3
    assert owner.tolist() == [0] + [1] * (len(spans) - 1)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[1], enc.embed([LONG])[0], atol=1e-6)  # the first window: the truncated text
    w = np.array([e - s for s, e in spans[1:]], float)
    mean = (raw[1:] * (w / w.sum())[:, None]).sum(0)
    got = enc.embed([SHORT[0], LONG], long_inputs="chunk", stride=stride)
    np.testing.assert_allclose(got[1], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(enc.embed([LONG], long_inputs="chunk", stride=stride, normalize=False)[0], mean,
                               atol=1e-6)
    assert not np.allclose(got[1], enc.embed([LONG])[0], atol=1e-3)  # it read more than the first window


def test_embed_refuses_a_stride_that_does_not_advance(enc):
    with pytest.raises(ValueError, match="--stride 30 must be smaller than the window"):
        enc.embed(SHORT, long_inputs="chunk", stride=30)
    with pytest.raises(ValueError, match="long_inputs must be one of"):
        enc.embed(SHORT, long_inputs="windows")


def test_embed_cli(tmp_path, tiny_dir, enc, capsys):
    (tmp_path / "in.txt").write_text("\n".join([*SHORT, LONG]) + "\n")
    args = ["embed", str(tiny_dir), "-i", str(tmp_path / "in.txt"), "--max-length", "32", "--long-inputs", "chunk",
            "--stride", "5"]
    assert main([*args, "-o", str(tmp_path / "out.npy")]) == 0
    want = enc.embed([*SHORT, LONG], long_inputs="chunk", stride=5)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-6)
    assert main([*args, "-o", str(tmp_path / "parts")]) == 0  # streamed into Parquet parts
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert manifest["settings"]["long_inputs"] == "chunk" and manifest["settings"]["stride"] == 5
    assert main([*args[:-1], "30", "-o", str(tmp_path / "bad.npy")]) == 2
    assert "--stride 30 must be smaller than the window (30 tokens" in capsys.readouterr().err
    assert main(["embed", str(tiny_dir), "-i", str(tmp_path / "in.txt"), "--stride", "5", "-o",
                 str(tmp_path / "alone.npy")]) == 2
    assert "--stride sets the overlap of windows: it applies with --long-inputs chunk" in capsys.readouterr().err


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    task_model("bert", d / "cls")
    return d


def test_predict_and_evaluate_cli(tmp_path, task_dirs, capsys):
    model = str(task_dirs / "cls")
    tm = TaskModel.from_pretrained(model)
    rows = [{"text": t, "label": lab} for t, lab in ((SHORT[0], "neg"), (LONG, "pos"), (LONG + " again", "neu"))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    assert main(["predict", model, "-i", str(tmp_path / "in.jsonl"), "-o", str(out), "--long-inputs", "chunk",
                 "--stride", "9", "--window-pooling", "max"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = tm.predict([r["text"] for r in rows], long_inputs="chunk", stride=9, window_pooling="max")
    assert [{k: g[k] for k in ("label", "probabilities")} for g in got] == want
    assert want != tm.predict([r["text"] for r in rows])  # the flags made a difference
    capsys.readouterr()
    assert main(["evaluate", model, "--data", str(tmp_path / "in.jsonl"), "--json", "--long-inputs", "chunk",
                 "--stride", "9"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["loss"] == pytest.approx(tm.evaluate(read_task_file(tmp_path / "in.jsonl", "classification"),
                                                        long_inputs="chunk", stride=9)["loss"])
    assert main(["predict", model, "-i", str(tmp_path / "in.jsonl"), "-o", str(out), "--long-inputs", "chunk",
                 "--stride", "62"]) == 2
    assert "--stride 62 must be smaller than the window (62 tokens" in capsys.readouterr().err
