"""The inference engine: batch planning, ordering, precision and int8 bounds, the onnx backend via the public API."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bertkit
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.inference.engine import Engine, EngineOptions, plan_batches
from bertkit.inference.int8 import Int8Linear, calibration_texts, quantize_linears
from bertkit.inference.onnx import export_onnx
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head

TEXTS = ["Shares fell sharply after the warning.", "hi", "The minister said the rules would change next year, "
         "after a long consultation with industry and unions.", "omg the train is late AGAIN lol",
         "What is the difference between a list and a tuple?", "ok", "Rain, then snow on higher ground."]


@given(st.lists(st.integers(1, 300), min_size=0, max_size=60), st.integers(1, 1000), st.integers(1, 40))
@settings(max_examples=200, deadline=None)
def test_plan_batches_covers_sorts_and_respects_budget(lengths, budget, cap):
    batches = plan_batches(lengths, budget, cap)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every input exactly once
    seq = [lengths[i] for i in flat]
    assert seq == sorted(lengths, reverse=True)  # longest first across batches
    for b in batches:
        assert 1 <= len(b) <= cap
        # within the budget, unless one sequence alone is longer than it
        assert sum(lengths[i] for i in b) <= budget or len(b) == 1
    for a, b in itertools.pairwise(batches):  # greedy: the next sequence did not fit
        assert len(a) == cap or sum(lengths[i] for i in a) + lengths[b[0]] > budget


def test_plan_keeps_input_order_among_equal_lengths():
    assert [b.tolist() for b in plan_batches([3, 5, 3, 5, 3], 100, 2)] == [[1, 3], [0, 2], [4]]


def test_options_are_checked():
    for bad in ({"dtype": "fp8"}, {"backend": "tensorrt"}, {"max_batch_tokens": 0}, {"threads": 0},
                {"int8": True, "dtype": "fp16"}):
        with pytest.raises(ValueError):
            EngineOptions(**bad)
    with pytest.raises(ValueError, match="needs a GPU"):
        Engine(EngineOptions(dtype="fp16")).prepare(torch.nn.Linear(2, 2), None, torch.device("cpu"))


def test_results_in_input_order_whatever_the_budget(minilm):
    """Token budgets change the batches, never the result: rows stay in input order."""
    ref = np.stack([minilm.embed([t])[0] for t in TEXTS])
    old = minilm.engine.options.max_batch_tokens
    try:
        for budget in (1, 20, 64, 10_000):
            minilm.engine.options.max_batch_tokens = budget
            np.testing.assert_allclose(minilm.embed(TEXTS), ref, atol=1e-5)
            np.testing.assert_allclose(minilm.embed(TEXTS, batch_size=2), ref, atol=1e-5)
    finally:
        minilm.engine.options.max_batch_tokens = old


def test_bf16_and_int8_stay_close_to_fp32(minilm):
    """The goals' quality bounds on real text (docs/benchmarks.md's inference-engine benchmark measures them on 2,000
    sequences)."""
    texts = TEXTS + calibration_texts()[::3]
    ref = minilm.embed(texts)
    bf16 = bertkit.load(dtype="bf16").embed(texts)
    int8 = bertkit.load(int8=True)
    assert sum(isinstance(m, Int8Linear) for m in int8.model.modules()) == 6 * 4 + 1  # every layer + pooler
    assert (bf16 * ref).sum(1).min() > 0.9999
    assert (int8.embed(texts) * ref).sum(1).min() > 0.99


def test_int8_tiny_batches_take_the_padded_int_mm():
    """Each kernel against float, and the kernel choice, are tested in test_cpu.py."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(50, 64)
    plain = Int8Linear(lin, kernel="int_mm")
    assert plain(x[:3]).shape == (3, 32)  # tiny batches take the padded int8 GEMM
    torch.testing.assert_close(plain(x[:3]), plain(x)[:3], atol=1e-5, rtol=0)


def test_quantize_linears_keeps_named_layers_and_odd_shapes():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 5), torch.nn.Linear(5, 16))
    done = quantize_linears(model, keep=["0"])
    assert done == [] and isinstance(model[0], torch.nn.Linear)  # kept by name; the others are not multiples of 8
    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    assert quantize_linears(model) == ["0"] and isinstance(model[0], Int8Linear)


@pytest.fixture(scope="module")
def tiny_task_onnx(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("engine_tiny")
    encoder, _ = load_pretrained(tiny_dir)
    torch.manual_seed(1)
    head = build_head(encoder, "classification", 3).eval()
    torch.nn.init.normal_(head.classifier.weight, std=1.0)
    TaskModel(head, WordPieceTokenizer.from_dir(tiny_dir), "classification", ["a", "b", "c"], 64).save_pretrained(
        d / "task")
    return export_onnx(d / "task", d / "onnx")


def test_onnx_backend_matches_torch_through_the_public_api(tiny_task_onnx, one_thread):
    """Encoder(..., backend="onnx") and TaskModel(..., backend="onnx"): same results as torch to 1e-4."""
    torch_enc, onnx_enc = bertkit.load(tiny_task_onnx), bertkit.load(tiny_task_onnx, backend="onnx")
    assert onnx_enc.info()["execution_path"] == "onnxruntime"
    np.testing.assert_allclose(onnx_enc.embed(TEXTS), torch_enc.embed(TEXTS), atol=1e-4)
    for a, b in zip(onnx_enc.token_states(TEXTS), torch_enc.token_states(TEXTS), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    tm_torch = TaskModel.from_pretrained(tiny_task_onnx)
    tm_onnx = TaskModel.from_pretrained(tiny_task_onnx, backend="onnx")
    for a, b in zip(tm_onnx.predict(TEXTS), tm_torch.predict(TEXTS), strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
