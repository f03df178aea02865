"""ONNX export and the onnxruntime runner: tiny random models, plus one export of all-MiniLM-L6-v2."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch

import bertkit
from bertkit.cli.main import main
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import BertkitError, CheckpointError
from bertkit.inference.onnx import (
    INT8_FILE,
    META_FILE,
    ONNX_FILE,
    OnnxModel,
    _check_parity,
    _fixed_batch,
    _load_graph,
    export_onnx,
    has_onnx,
)
from bertkit.model.attention import Packing
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head

# (batch, seq, lengths of the rows): batch 1 and several, lengths 1..64, right padding
SHAPES = [(1, 1, [1]), (1, 64, [64]), (3, 1, [1, 1, 1]), (4, 17, [17, 9, 3, 1]), (2, 64, [64, 40]),
          (7, 33, [33, 33, 30, 12, 5, 2, 1])]


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    """Tiny models gain nothing from threads, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dir):
    """The tiny encoder exported once through the CLI, with --int8: (directory, printed summary)."""
    out = tmp_path_factory.mktemp("tiny_onnx") / "export"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["-q", "export", "onnx", str(tiny_dir), "--output", str(out), "--int8"]) == 0
    return out, stdout.getvalue()


def padded(lengths: list[int], seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A right-padded (batch, seq) int64 batch; the second half of each row is segment 1."""
    rng = np.random.default_rng(seed)
    mask = np.arange(seq)[None, :] < np.array(lengths)[:, None]
    ids = np.where(mask, rng.integers(1000, 30000, (len(lengths), seq)), 0)
    types = ((np.arange(seq)[None, :] >= seq // 2) & mask).astype(np.int64)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64), "token_type_ids": types}


def torch_hidden(model, batch) -> np.ndarray:
    """Token states (batch, seq, hidden) from torch's default (unpadded) path."""
    with torch.inference_mode():
        out = model(*(torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    return out.last_hidden_state.numpy()


def test_encoder_parity_dynamic_shapes(exported, tiny_dir):
    out, _ = exported
    graph = onnx.load(str(out / ONNX_FILE))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.graph.input, *graph.graph.output]}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "token_type_ids": ["batch", "sequence"], "last_hidden_state": ["batch", "sequence", 32]}
    model, _ = load_pretrained(tiny_dir)
    runner = OnnxModel(out, threads=1)
    assert runner.output_names == ["last_hidden_state"]
    for b, s, lengths in SHAPES:
        batch = padded(lengths, s, seed=b * 100 + s)
        got = runner.run(**batch)["last_hidden_state"]
        assert got.shape == (b, s, 32) and got.dtype == np.float32
        real = batch["attention_mask"].astype(bool)
        diff = np.abs(got - torch_hidden(model, batch))[real].max()
        assert diff < 1e-4, (b, s, diff)


def test_export_dir_and_metadata(exported, tiny_dir):
    out, summary = exported
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == "encoder" and meta["path"] in ("reference", "sdpa") and meta["opset"] >= 17
    assert meta["parity_max_abs_diff"] < 1e-4
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", ONNX_FILE, INT8_FILE} <= set(
        meta["files"])
    assert all((out / f).is_file() for f in meta["files"])
    assert summary.startswith("exported encoder") and "onnxruntime - torch" in summary
    assert has_onnx(out) and has_onnx(out, int8=True) and not has_onnx(tiny_dir)
    # torch still loads the exported directory, with the same embeddings
    texts = ["hello world", "a longer sentence about nothing in particular"]
    np.testing.assert_allclose(bertkit.load(out).embed(texts), bertkit.load(tiny_dir).embed(texts), atol=1e-6)


def test_int8_runs_and_correlates(exported):
    out, summary = exported
    meta = json.loads((out / META_FILE).read_text())
    assert meta["int8"]["cosine_min"] > 0.9 and "model.int8.onnx" in summary
    batch = padded([20, 11, 4], 20)
    mask = batch["attention_mask"][..., None]
    pooled = []
    for int8 in (False, True):
        h = OnnxModel(out, int8=int8, threads=1).run(**batch)["last_hidden_state"]
        e = (h * mask).sum(1) / mask.sum(1)
        pooled.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    assert ((pooled[0] * pooled[1]).sum(1) > 0.9).all()


@pytest.mark.parametrize("task,labels", [("classification", ["neg", "neu", "pos"]),
                                         ("ner", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])])
def test_task_model_logits(tmp_path, tiny_dir, task, labels):
    encoder, _ = load_pretrained(tiny_dir)
    torch.manual_seed(1)
    head = build_head(encoder, task, len(labels)).eval()
    torch.nn.init.normal_(head.classifier.weight, std=1.0)  # logits of size ~1, not ~0.02: a real comparison
    TaskModel(head, WordPieceTokenizer.from_dir(tiny_dir), task, labels, 64).save_pretrained(tmp_path / "task")
    out = export_onnx(tmp_path / "task", tmp_path / "onnx")

    runner = OnnxModel(out, threads=1)
    assert runner.output_names == ["last_hidden_state", "logits"]
    lengths = [12, 7, 1]
    batch = padded(lengths, 12)
    logits = runner.run(**batch)["logits"]
    real = batch["attention_mask"].astype(bool)
    packing = Packing.from_lengths(lengths)
    with torch.inference_mode():
        want = head(torch.from_numpy(batch["input_ids"][real]), packing,
                    torch.from_numpy(batch["token_type_ids"][real])).numpy()
    if task == "ner":
        assert logits.shape == (3, 12, len(labels))
        logits = logits[real]  # (total_tokens, num_labels), as the packed head
    else:
        assert logits.shape == (3, len(labels))
    assert np.abs(logits - want).max() < 1e-4
    # the copied files keep it a task model for torch
    assert TaskModel.from_pretrained(out).labels == labels


def test_errors(tmp_path, tiny_dir, capsys):
    assert main(["export", "onnx", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert "no such local directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", "onnx", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tiny_dir, tmp_path / "out", opset=13)
    with pytest.raises(CheckpointError, match=r"model\.onnx.*bertkit export onnx"):
        OnnxModel(tiny_dir)
    assert isinstance(CheckpointError("x"), BertkitError)


def test_parity_check_catches_a_wrong_graph(exported, tiny_dir):
    """The export's check compares onnxruntime with torch on padded rows; here torch has other weights."""
    graph = _load_graph(tiny_dir)
    with torch.no_grad():
        graph.encoder.layers[-1].mlp_out.bias[0] += 0.1  # one feature: a uniform shift would vanish in LayerNorm
    with pytest.raises(BertkitError, match="differs from torch"):
        _check_parity(graph, exported[0] / ONNX_FILE, _fixed_batch(graph.encoder.config))


def test_runner_input_checks(exported):
    runner = OnnxModel(exported[0], threads=1)
    batch = padded([5], 5)
    with pytest.raises(ValueError, match="one \\(batch, seq\\) shape"):
        runner.run(batch["input_ids"], batch["attention_mask"][:, :3], batch["token_type_ids"])
    long = padded([129], 129)  # the tiny model has 128 positions
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        runner.run(**long)


def test_minilm_export(tmp_path, minilm, one_thread):
    """The real model: embeddings from onnxruntime match the torch Encoder's."""
    out = export_onnx("all-MiniLM-L6-v2", tmp_path / "minilm")
    texts = ["A man is playing a guitar.", "hi", "Stocks fell sharply after the central bank raised rates."]
    enc = minilm.tokenize(texts)
    s = max(enc.lengths)
    batch = {k: np.zeros((len(texts), s), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, (ids, types) in enumerate(zip(enc.ids, enc.type_ids, strict=True)):
        batch["input_ids"][i, :len(ids)], batch["token_type_ids"][i, :len(ids)] = ids, types
        batch["attention_mask"][i, :len(ids)] = 1
    h = OnnxModel(out, threads=1).run(**batch)["last_hidden_state"]
    mask = batch["attention_mask"][..., None]
    e = (h * mask).sum(1) / mask.sum(1)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(e, minilm.embed(texts), atol=1e-5)


def test_backend_equals_onnxruntime_direct(exported, tiny_dir):
    """bertkit's ONNX backend (length-sorted token-budget batches, numpy grid) against a plain onnxruntime
    session fed one padded text at a time: the same states to 1e-6."""
    import onnxruntime as ort

    out, _ = exported
    texts = ["Shares fell sharply after the warning.", "hi", "The minister said the rules would change.",
             "omg the train is late AGAIN lol", "What is the difference between a list and a tuple?"]
    enc = bertkit.load(out, backend="onnx")
    assert enc.onnx.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    direct = ort.InferenceSession(str(out / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
    ids = enc.tokenize(texts).ids
    got = enc.token_states(texts)
    for seq, states in zip(ids, got, strict=True):
        feed = {"input_ids": np.array([seq]), "attention_mask": np.ones((1, len(seq)), np.int64),
                "token_type_ids": np.zeros((1, len(seq)), np.int64)}
        want = direct.run(["last_hidden_state"], feed)[0][0]
        np.testing.assert_allclose(states, want, atol=1e-6, rtol=0)


def test_run_packed_equals_run(exported):
    out, _ = exported
    m = OnnxModel(out)
    lengths = [5, 5, 3, 1]
    ids = np.random.default_rng(0).integers(1000, 2000, sum(lengths))
    packed = m.run_packed(ids, None, lengths, pad_id=0)["last_hidden_state"]
    start = 0
    for n in lengths:
        row = m.run(ids[None, start:start + n], np.ones((1, n), np.int64), np.zeros((1, n), np.int64))
        np.testing.assert_allclose(packed[start:start + n], row["last_hidden_state"][0], atol=1e-6, rtol=0)
        start += n


def test_auto_picks_the_int8_graph_only_within_the_bound(exported, tmp_path):
    from bertkit.inference.engine import AUTO_MIN_COSINE, EngineOptions

    out, _ = exported
    meta = json.loads((out / META_FILE).read_text())
    q = meta["int8"]["calibration_cosine_min"]  # measured at export on the calibration texts
    assert -1.0 <= q <= 1.0 and meta["int8"]["calibration_cosine_mean"] >= q
    assert OnnxModel.from_options(out, EngineOptions(dtype="auto")).int8 == (q >= AUTO_MIN_COSINE)
    for cosine, want in ((0.999, True), (0.95, False)):
        d = tmp_path / str(cosine)
        d.mkdir()
        for name in (ONNX_FILE, INT8_FILE):
            (d / name).write_bytes((out / name).read_bytes())
        (d / META_FILE).write_text(json.dumps({**meta, "int8": {**meta["int8"], "calibration_cosine_min": cosine}}))
        assert OnnxModel.from_options(d, EngineOptions(dtype="auto")).int8 is want
    assert OnnxModel.from_options(out, EngineOptions(int8=True)).int8


def test_onnx_batches_are_capped():
    """onnxruntime runs padded grids: the engine caps its batches at ONNX_MAX_BATCH texts (torch keeps its budget)."""
    from bertkit.inference.engine import ONNX_MAX_BATCH, Engine, EngineOptions

    lengths = [5] * 100
    assert max(map(len, Engine(EngineOptions(backend="onnx")).plan(lengths))) == ONNX_MAX_BATCH
    assert max(map(len, Engine(EngineOptions()).plan(lengths))) == 100
    assert max(map(len, Engine(EngineOptions(backend="onnx")).plan(lengths, max_batch_size=8))) == 8
