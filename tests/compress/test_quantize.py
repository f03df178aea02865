"""Quantization for compression: group-wise error bounds and int4 packing, static / dynamic int8, the compressed
checkpoint (predictions after a round trip, sizes measured from the files, exact sparse storage), refusals, and
quantization-aware training (straight-through gradients, a few Trainer steps)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bertkit
from bertkit.compress.quantize import (
    FakeQuantLinear,
    QuantizationError,
    StaticInt8Linear,
    WeightOnlyLinear,
    convert_qat,
    dequantize_groups,
    load_compressed,
    pack_bits,
    pack_int4,
    prepare_qat,
    quantize_dynamic,
    quantize_groups,
    quantize_static,
    quantize_weights,
    save_compressed,
    size_report,
    unpack_bits,
    unpack_int4,
)
from bertkit.data.features import featurize, make_batch
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError
from bertkit.inference.engine import EngineOptions
from bertkit.inference.int8 import Int8Linear
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head
from bertkit.train.engine import TrainConfig, Trainer

TEXTS = ["Shares fell sharply after the warning.", "hi", "The minister said the rules would change next year.",
         "omg the train is late AGAIN lol", "What is the difference between a list and a tuple?",
         "Rain, then snow on higher ground.", "The striker scored twice in the second half.", "ok"]
LAYER_LINEARS = [f"encoder.layers.{i}.{n}" for i in range(2) for n in ("Wqkv", "attn_out", "mlp_in", "mlp_out")]

pytestmark = pytest.mark.usefixtures("one_thread")


def task_model(tiny_dir, spread: bool = True) -> TaskModel:
    """A fresh float classifier on the tiny random encoder (hidden 32, 2 layers); ``spread``: a large classifier
    init, so that probabilities differ between texts."""
    encoder, _ = load_pretrained(tiny_dir)
    torch.manual_seed(1)
    head = build_head(encoder, "classification", 3).eval()
    if spread:
        nn.init.normal_(head.classifier.weight, std=1.0)
    return TaskModel(head, WordPieceTokenizer.from_dir(tiny_dir), "classification", ["a", "b", "c"], 64)


def probs(tm: TaskModel) -> np.ndarray:
    return np.array([[p["probabilities"][n] for n in tm.labels] for p in tm.predict(TEXTS)])


def prune_(weight: torch.Tensor, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction ``sparsity`` of a weight, in place."""
    k = int(sparsity * weight.numel())
    idx = weight.detach().abs().flatten().argsort()[:k]
    with torch.no_grad():
        weight.view(-1)[idx] = 0.0


# ---- group-wise quantization -----------------------------------------------------------------------------
def test_groupwise_round_trip_error_bounds():
    torch.manual_seed(0)
    w = torch.randn(64, 200) * 0.05  # 200 = 3 groups of 64 + a padded group of 8
    w[3, 7] = 2.0  # an outlier: per-channel scales would spend row 3's levels on it
    errors = {}
    for bits in (8, 4):
        q, scales = quantize_groups(w, bits, group_size=64)
        assert q.dtype == torch.int8 and scales.shape == (64, 4) and scales.dtype == torch.float16
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
        deq = dequantize_groups(q, scales, 64)
        per_col_scale = scales.float().repeat_interleave(64, dim=1)[:, :200]
        assert bool(((deq - w).abs() <= per_col_scale / 2 + 1e-7).all())  # rounding: half a level at most
        errors[bits] = ((deq - w).norm() / w.norm()).item()
        # groups confine the outlier: row 3's other groups keep their fine scales
        per_channel = dequantize_groups(*quantize_groups(w, bits, group_size=200), 200)
        assert (deq[3] - w[3]).norm() < (per_channel[3] - w[3]).norm()
    assert errors[8] < 0.01 and errors[4] < 0.15  # measured 0.008 and 0.127
    assert errors[4] > 8 * errors[8]  # 127 vs 7 levels a side


def test_int4_packing_and_bitmask_round_trip():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # every 4-bit value, (3, 32)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == (-8 & 0xF) | ((-7 & 0xF) << 4)  # element 0 in the low nibble
    with pytest.raises(QuantizationError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    for n in (1, 8, 13, 1000):
        mask = torch.rand(n) < 0.3
        bits = pack_bits(mask)
        assert bits.shape == (math.ceil(n / 8),)
        assert torch.equal(unpack_bits(bits, n), mask)
    assert torch.equal(pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)),
                       torch.tensor([129, 1], dtype=torch.uint8))  # numpy's packbits, little bit order


def test_weight_only_linear_forward_and_dtypes():
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    x = torch.randn(5, 64)
    for bits in (8, 4):
        m = WeightOnlyLinear.from_linear(lin, bits, group_size=32)
        assert m.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
        assert m.qweight.shape == ((24, 64) if bits == 8 else (24, 32)) and m.scales.shape == (24, 2)
        torch.testing.assert_close(m(x), F.linear(x, m.dequantize(), lin.bias), atol=1e-6, rtol=0)
        assert m(x.bfloat16()).dtype == torch.bfloat16  # dequantized to the activations' dtype
    fp32 = WeightOnlyLinear.from_linear(lin, 8, 32, scale_dtype=torch.float32)
    assert fp32.scales.dtype == torch.float32


# ---- in-memory quantization of a task model --------------------------------------------------------------
def test_quantize_weights_layers_and_prediction_error(tiny_dir):
    ref = probs(task_model(tiny_dir))
    errors = {}
    for bits in (8, 4):
        tm = task_model(tiny_dir)
        assert quantize_weights(tm, bits=bits, group_size=16) == LAYER_LINEARS
        assert type(tm.head.classifier) is nn.Linear and type(tm.head.encoder.pooler.dense) is nn.Linear
        errors[bits] = np.abs(probs(tm) - ref).max()
    assert errors[8] < 0.01 and errors[4] < 0.1 and errors[4] > errors[8]
    tm = task_model(tiny_dir)
    done = quantize_weights(tm, bits=8, skip=())
    assert done == [*LAYER_LINEARS, "encoder.pooler.dense", "classifier"]


def test_static_int8_close_to_float_on_calibration_like_input(tiny_dir):
    enc = bertkit.load(tiny_dir)
    ref = enc.embed(TEXTS)
    names = quantize_static(enc)  # calibrated on the built-in sentences, run on other everyday sentences
    assert len(names) == 9 and isinstance(enc.model.pooler.dense, StaticInt8Linear)
    assert (enc.embed(TEXTS) * ref).sum(1).min() > 0.999
    plain = bertkit.load(tiny_dir)
    quantize_static(plain, alpha=None)  # per-tensor scales without smoothing also run
    assert (plain.embed(TEXTS) * ref).sum(1).min() > 0.99
    with pytest.raises(QuantizationError, match="calibration_batches_fn"):
        quantize_static(nn.Sequential(nn.Linear(8, 8)))


def test_refuses_steps_that_do_not_apply(tiny_dir, tmp_path):
    tm = task_model(tiny_dir)
    quantize_dynamic(tm)
    assert isinstance(tm.head.encoder.layers[0].Wqkv, Int8Linear)
    with pytest.raises(QuantizationError, match=r"quantize_weights\(bits=4\): layer 'encoder.layers.0.Wqkv' is "
                                                r"already quantized \(int8 dynamic\)"):
        quantize_weights(tm, bits=4)
    with pytest.raises(QuantizationError, match=r"quantize_static: layer 'layers.0.Wqkv'.*int8 dynamic"):
        quantize_static(tm)
    tm = task_model(tiny_dir)
    quantize_weights(tm, bits=8)
    with pytest.raises(QuantizationError, match="int8 weight-only"):
        quantize_weights(tm, bits=4)
    with pytest.raises(QuantizationError, match="prepare_qat"):
        prepare_qat(tm)
    with pytest.raises(QuantizationError, match="bits must be 4 or 8"):
        quantize_weights(task_model(tiny_dir), bits=3)
    with pytest.raises(QuantizationError, match="layer '0' has 5 input features"):
        quantize_weights(nn.Sequential(nn.Linear(5, 8)), bits=4)
    with pytest.raises(QuantizationError, match="prepare_qat first"):
        convert_qat(task_model(tiny_dir))
    qat = task_model(tiny_dir)
    prepare_qat(qat, bits=4)
    with pytest.raises(QuantizationError, match="convert_qat"):
        save_compressed(qat, tmp_path / "qat")
    odd = task_model(tiny_dir)
    odd.head.encoder.layers[1].mlp_in = nn.Bilinear(32, 32, 64)
    with pytest.raises(QuantizationError, match=r"'encoder\.layers\.1\.mlp_in' is a Bilinear"):
        save_compressed(odd, tmp_path / "odd")
    with pytest.raises(CheckpointError, match="not a compressed checkpoint"):
        load_compressed(tiny_dir)
    save_compressed(tm, tmp_path / "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        load_compressed(tmp_path / "int8", engine=EngineOptions(int8=True))


# ---- the compressed checkpoint -------------------------------------------------------------------------
def _quantize(tm: TaskModel, scheme: str) -> None:
    if scheme in ("int8", "int4"):
        quantize_weights(tm, bits=int(scheme[-1]), group_size=16, skip=("classifier",))
    elif scheme == "static":
        quantize_static(tm)
    elif scheme == "dynamic":
        quantize_dynamic(tm)


@pytest.mark.parametrize("scheme", ["int8", "int4", "static", "dynamic", "float"])
def test_save_load_gives_the_in_memory_predictions(tiny_dir, tmp_path, scheme):
    tm = task_model(tiny_dir)
    prune_(tm.head.encoder.layers[1].mlp_in.weight, 0.7)  # stored sparse, whatever the scheme
    _quantize(tm, scheme)
    want = probs(tm)
    d = save_compressed(tm, tmp_path / scheme)
    section = json.loads((d / "config.json").read_text())["quantization"]
    assert section["scheme"] == {"int8": "weight_only", "int4": "weight_only", "static": "int8_static",
                                 "dynamic": "int8_dynamic", "float": "none"}[scheme]
    assert any(k.startswith("encoder.layers.1.mlp_in.") for k in section["sparse"])
    loaded = load_compressed(d)
    assert isinstance(loaded, TaskModel) and loaded.labels == tm.labels
    assert [type(m) for m in loaded.head.modules()] == [type(m) for m in tm.head.modules()]
    np.testing.assert_allclose(probs(loaded), want, atol=1e-6, rtol=0)
    float_loaded = load_compressed(d, dequantize=True)  # float Linears, the stored weights dequantized once
    assert not any(isinstance(m, WeightOnlyLinear | StaticInt8Linear | Int8Linear)
                   for m in float_loaded.head.modules())
    if scheme in ("int8", "int4", "float"):  # weight-only: the same weights, so the same predictions
        np.testing.assert_allclose(probs(float_loaded), want, atol=1e-5, rtol=0)


def test_encoder_round_trip(tiny_dir, tmp_path):
    enc = bertkit.load(tiny_dir)
    quantize_weights(enc, bits=4, group_size=16)
    want = enc.embed(TEXTS)
    loaded = load_compressed(save_compressed(enc, tmp_path / "enc"))
    assert isinstance(loaded, bertkit.Encoder) and loaded.max_length == enc.max_length
    np.testing.assert_allclose(loaded.embed(TEXTS), want, atol=1e-6, rtol=0)


def test_size_report_measures_the_files(tiny_dir, tmp_path):
    reports = {}
    for bits in (32, 8, 4):
        tm = task_model(tiny_dir)
        if bits != 32:
            quantize_weights(tm, bits=bits, group_size=16)  # 16 divides every layer's input size
        reports[bits] = size_report(save_compressed(tm, tmp_path / f"b{bits}"))
    numel = 2 * (96 * 32 + 32 * 32 + 64 * 32 + 32 * 64)  # the eight layer Linears of the tiny model
    groups = 2 * (96 * 2 + 32 * 2 + 64 * 2 + 32 * 4)  # one fp16 scale per 16 input columns of each row
    for bits, r in reports.items():
        k = r["kinds"]
        assert r["total_bytes"] == sum(r["files"].values())
        assert sum(k.values()) + r["header_bytes"] == r["files"]["model.safetensors"]
        assert k["embeddings"] == reports[32]["kinds"]["embeddings"] > 0  # embeddings stay fp32
        assert k["masks"] == 0
        if bits == 32:
            assert k["weights_float"] == 4 * numel + 4 * (32 * 32 + 3 * 32)  # + pooler and classifier
            continue
        assert k[f"weights_int{bits}"] == numel * bits // 8 and k["scales"] == 2 * groups
        assert r["quantized_fp32_bytes"] == 4 * numel
        assert r["fp32_bytes"] == reports[32]["fp32_bytes"]  # the same model, counted dense fp32
        ratio = (k[f"weights_int{bits}"] + k["scales"]) / r["quantized_fp32_bytes"]
        # ~1/4 and ~1/8 of fp32, plus one 2-byte scale per 16 weights (2 / (16 * 4) = 1/32)
        assert ratio == pytest.approx(bits / 32 + 1 / 32)
    assert reports[4]["weights_file_bytes"] < reports[8]["weights_file_bytes"] < reports[32]["weights_file_bytes"]


def test_sparse_storage_is_exact_and_small(tiny_dir, tmp_path):
    tm = task_model(tiny_dir)
    layer = tm.head.encoder.layers[0]
    prune_(layer.Wqkv.weight, 0.6)
    prune_(layer.mlp_out.weight, 0.9)
    prune_(layer.attn_out.weight, 0.3)  # under the 50% threshold: dense
    want = {k: v.clone() for k, v in tm.head.state_dict().items()}
    d = save_compressed(tm, tmp_path / "float")
    sparse = json.loads((d / "config.json").read_text())["quantization"]["sparse"]
    assert set(sparse) == {"encoder.layers.0.Wqkv.weight", "encoder.layers.0.mlp_out.weight"}
    report = size_report(d)
    wqkv = report["tensors"]
    assert wqkv["encoder.layers.0.Wqkv.weight.mask"]["bytes"] == 96 * 32 // 8
    assert wqkv["encoder.layers.0.Wqkv.weight.values"]["bytes"] == 4 * sparse["encoder.layers.0.Wqkv.weight"]["nnz"]
    assert wqkv["encoder.layers.0.Wqkv.weight.values"]["kind"] == "weights_float"
    got = load_compressed(d).head.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)  # bit for bit

    quantize_weights(tm, bits=4, group_size=16)  # pruned zeros stay zero levels: the int4 codes go sparse too
    q_want = {k: v.clone() for k, v in tm.head.state_dict().items()}
    d4 = save_compressed(tm, tmp_path / "int4")
    dense4 = save_compressed(tm, tmp_path / "int4-dense", sparse_threshold=None)
    assert "encoder.layers.0.mlp_out.qweight" in json.loads((d4 / "config.json").read_text())["quantization"]["sparse"]
    got = load_compressed(d4).head.state_dict()
    assert all(torch.equal(got[k], q_want[k]) for k in q_want)
    k4, kd = size_report(d4)["kinds"], size_report(dense4)["kinds"]
    assert k4["weights_int4"] + k4["masks"] < kd["weights_int4"]


# ---- quantization-aware training -------------------------------------------------------------------------
def test_fake_quant_straight_through_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    for act_bits in (None, 8):
        fq = FakeQuantLinear.from_linear(lin, bits=4, act_bits=act_bits)
        assert fq.weight is lin.weight  # the same Parameter: an optimizer keeps training it
        x = torch.randn(10, 64, requires_grad=True)
        g = torch.randn(10, 16)
        lin.zero_grad()
        (fq(x) * g).sum().backward()
        wq = fq.quantized_weight()
        assert not torch.equal(wq, lin.weight.detach())  # the forward did round
        xq = x.detach()
        if act_bits:  # per token, 127 levels a side
            step = xq.abs().amax(1, keepdim=True) / 127
            xq = torch.round(xq / step) * step
        torch.testing.assert_close(fq.weight.grad, g.t() @ xq)  # d/dW of F.linear(xq, wq): round is identity
        torch.testing.assert_close(x.grad, g @ wq)
        torch.testing.assert_close(fq.bias.grad, g.sum(0))
    fq = FakeQuantLinear.from_linear(lin, bits=4, group_size=16)
    x = torch.randn(10, 64)
    converted = nn.Sequential(fq)
    with torch.no_grad():
        want = fq(x)
    convert_qat(converted)
    assert isinstance(converted[0], WeightOnlyLinear) and converted[0].group_size == 16
    torch.testing.assert_close(converted[0](x), want, atol=1e-6, rtol=0)  # inference = what QAT trained


def test_qat_trains_on_the_training_engine(tiny_dir, tmp_path):
    tm = task_model(tiny_dir, spread=False)  # BERT's init: the spread-out head makes the first steps jump
    assert prepare_qat(tm, bits=4, act_bits=8) == LAYER_LINEARS
    data = TaskData("classification", TEXTS, None, ["a", "b", "c", "a", "b", "c", "a", "b"], None, "test")
    batch = make_batch(featurize(data, tm.tokenizer, 64, tm.label2id), range(len(TEXTS)))
    cfg = TrainConfig(max_steps=10, lr=3e-3, warmup_ratio=0.0, schedule="constant", progress=False, log_every=1,
                      eval_every=1000, device="cpu", seed=0)
    tm.head.train()
    Trainer(tm.head, cfg, batches=lambda epoch: [batch], loss_fn=tm.loss, output_dir=tmp_path / "run").fit()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert len(losses) == 10 and losses[-1] < 0.95 * losses[0]  # measured 1.097 -> 0.986
    assert all(isinstance(tm.head.encoder.layers[i].Wqkv, FakeQuantLinear) for i in range(2))
    tm.head.eval()
    convert_qat(tm)
    want = probs(tm)
    loaded = load_compressed(save_compressed(tm, tmp_path / "qat-int4"))
    np.testing.assert_allclose(probs(loaded), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_embeddings_round_trip_and_shrink(tiny_dir, tmp_path, bits):
    """The word table stored at 8 / 4 bits: lookups equal the dequantized table, a save/load round trip gives the
    in-memory predictions, the file's embedding bytes shrink ~4x / ~8x, and quantizing twice is refused."""
    from bertkit.compress.quantize import QuantizedEmbedding, dequantize_model, quantize_embeddings

    tm = task_model(tiny_dir)
    float_table = tm.head.encoder.embeddings.word.weight.detach().clone()
    save_compressed(tm, tmp_path / "float")
    assert quantize_embeddings(tm, bits=bits, group_size=16) == ["encoder.embeddings.word",
                                                                  "encoder.embeddings.position"]
    assert type(tm.head.encoder.embeddings.token_type) is nn.Embedding  # 2 rows: stays float
    emb = tm.head.encoder.embeddings.word
    assert isinstance(emb, QuantizedEmbedding)
    ids = torch.tensor([[0, 5, 101], [2000, 30521, 7]])
    torch.testing.assert_close(emb(ids), emb.dequantize()[ids])
    err = ((emb.dequantize() - float_table).norm() / float_table.norm()).item()
    assert err < (0.01 if bits == 8 else 0.2)
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_embeddings(tm, bits=4)

    want = tm.predict(TEXTS)
    save_compressed(tm, tmp_path / "q")
    back = load_compressed(tmp_path / "q")
    for a, b in zip(back.predict(TEXTS), want, strict=True):
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
    before = size_report(tmp_path / "float")["kinds"]["embeddings"]
    after = size_report(tmp_path / "q")["kinds"]["embeddings"]
    tables = (float_table.numel() + tm.head.encoder.embeddings.position.qweight.shape[0] * 32) * 4
    assert after < before - tables * (0.70 if bits == 8 else 0.83)  # the int tables + fp16 scales per 16 values
    dequantize_model(back)
    assert type(back.head.encoder.embeddings.word) is nn.Embedding
    for a, b in zip(back.predict(TEXTS), want, strict=True):
        assert a["label"] == b["label"]
