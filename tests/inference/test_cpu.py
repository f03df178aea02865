"""Kernel choice by CPU capability (inference/cpu.py), the int8 kernels it chooses between, and dtype="auto"."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

import bertkit
from bertkit.data.tokenizer import Tokenizer
from bertkit.inference import cpu, engine
from bertkit.inference.cpu import CpuInfo, KernelChoice
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.inference.int8 import Int8Linear, quantize_linears, weight_qmax
from bertkit.model.weights import load_pretrained

HAS_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines
needs_fbgemm = pytest.mark.skipif(not HAS_FBGEMM, reason="torch built without fbgemm")

EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx f16c avx2 bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx f16c avx2 bmi2 sha_ni
"""
SAPPHIRE = """model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni
"""


def info(*flags: str, fbgemm: bool = True, model: str = "test cpu") -> CpuInfo:
    return CpuInfo(model, frozenset(flags), "AVX2", "2.x", fbgemm)


def test_parse_cpuinfo_reads_the_model_and_known_features():
    assert cpu.parse_cpuinfo(EPYC) == ("AMD EPYC 7B13", frozenset({"avx2"}))
    model, flags = cpu.parse_cpuinfo(SAPPHIRE)
    assert model.startswith("Intel") and {"avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni"} <= flags
    assert cpu.parse_cpuinfo("") == ("", frozenset())


@pytest.mark.parametrize("flags, cls, vnni, bf16", [
    ((), "generic", False, False),
    (("avx2",), "avx2", False, False),
    (("avx2", "avx_vnni"), "avx2_vnni", True, False),
    (("avx2", "avx512f"), "avx512", False, False),
    (("avx2", "avx512f", "avx512_vnni"), "avx512_vnni", True, False),
    (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), "avx512_bf16_vnni", True, True),
    (("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"), "amx", True, True),
])
def test_cpu_class_and_capabilities(flags, cls, vnni, bf16):
    i = info(*flags)
    assert (i.cpu_class, i.vnni, i.native_bf16) == (cls, vnni, bf16)


def test_avx2_without_vnni_is_settled_by_capability():
    """The AVX2 branch: fbgemm in 7 bits, no bf16, int8 before fp32; nothing measured."""
    def never(_):
        raise AssertionError("capability settles this CPU: nothing to measure")

    for flags in (("avx2",), ("avx2", "avx512f")):
        choice = cpu.choose(info(*flags), measure_fn=never)
        assert (choice.int8, choice.int8_weight_bits, choice.int8_qmax) == ("fbgemm", 7, 63)
        assert not choice.bf16_native and choice.order == ("int8", "fp32") and choice.source == "capability"


def test_without_fbgemm_and_vnni_int8_is_never_auto():
    choice = cpu.choose(info("avx2", fbgemm=False), measure_fn=lambda _: pytest.fail("settled"))
    assert choice.int8 == "int_mm" and choice.order == ("fp32",)


@pytest.mark.parametrize("flags", [("avx2", "avx512f", "avx512_vnni"), ("avx2", "avx_vnni"),
                                   ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")])
def test_vnni_or_native_bf16_is_measured_once_then_cached(flags, own_cache_dir):
    calls = []

    def fake_measure(i: CpuInfo) -> KernelChoice:
        calls.append(i)
        return KernelChoice("int_mm", 8, i.native_bf16, ("bf16", "int8", "fp32") if i.native_bf16 else
                            ("int8", "fp32"), "measured", {"fp32": 3.0, "int8": 1.0})

    first = cpu.choose(info(*flags), measure_fn=fake_measure)
    again = cpu.choose(info(*flags), measure_fn=fake_measure)
    assert len(calls) == 1 and first.source == "measured" and again.source == "cache"
    assert (again.int8, again.order, again.bf16_native) == (first.int8, first.order, first.bf16_native)
    # keyed by the machine: another model name is measured anew
    cpu.choose(info(*flags, model="other cpu"), measure_fn=fake_measure)
    assert len(calls) == 2
    cached = json.loads((own_cache_dir / cpu.CACHE_FILE).read_text())
    assert len(cached) == 2 and all(v["version"] == cpu.CACHE_VERSION for v in cached.values())


def test_a_corrupt_cache_is_measured_over(own_cache_dir):
    own_cache_dir.mkdir(parents=True)
    (own_cache_dir / cpu.CACHE_FILE).write_text("{not json")
    choice = cpu.choose(info("avx2", "avx_vnni"), measure_fn=lambda i: KernelChoice(
        "fbgemm", 8, False, ("int8", "fp32"), "measured"))
    assert choice.source == "measured"
    assert cpu.choose(info("avx2", "avx_vnni"), measure_fn=lambda i: pytest.fail("cached")).source == "cache"


def test_real_measurement_on_this_machine(one_thread):
    """The measurement itself (small, so _int_mm's slow path on AVX2 stays short; one thread, so a busy machine
    does not stall it at every parallel region): a usable, ordered choice."""
    choice = cpu.measure(cpu.detect(), tokens=64, hidden=128, ffn=256)
    assert choice.int8 in cpu.INT8_KERNELS and choice.order[-1] == "fp32"
    assert all(choice.timings_us[p] <= choice.timings_us["fp32"] for p in choice.order)
    if HAS_FBGEMM and not cpu.detect().vnni:  # the capability rule holds here: without VNNI fbgemm wins
        assert choice.timings_us["int8:fbgemm"] < choice.timings_us["int8:int_mm"]


def test_this_machine_is_detected():
    i = cpu.detect()
    assert i.torch_capability == torch.backends.cpu.get_cpu_capability()
    k = cpu.kernels()
    assert k.int8 in cpu.INT8_KERNELS and k.order[-1] == "fp32"
    if not i.native_bf16:
        assert "bf16" not in k.order  # never chosen where emulated


# ---- the int8 kernels: each equals the float reference within its bound ------------------------------------
KERNELS = ["int_mm", pytest.param("fbgemm", marks=needs_fbgemm)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_kernel_matches_float_and_smoothing_handles_outliers(kernel):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(50, 64)
    x[:, 5] *= 60.0  # an outlier channel, as in BERT's LayerNorm outputs
    smooth = (x.abs().amax(0) / lin.weight.abs().amax(0)) ** 0.5
    plain, smoothed = Int8Linear(lin, kernel=kernel), Int8Linear(lin, smooth=smooth, kernel=kernel)
    ref = lin(x)
    err_plain = ((plain(x) - ref).norm() / ref.norm()).item()
    err_smooth = ((smoothed(x) - ref).norm() / ref.norm()).item()
    assert err_smooth < err_plain < 0.05
    assert plain(x[:3]).shape == (3, 32)
    if kernel == "int_mm":  # per-token scales: rows independent of the batch
        torch.testing.assert_close(plain(x[:3]), plain(x)[:3], atol=1e-5, rtol=0)
    else:  # per-token scales, one shared [min, max] of the normalized rows: equal within the rounding
        assert ((plain(x[:3]) - ref[:3]).norm() / ref[:3].norm()).item() < 0.05
    y = plain(x.view(5, 10, 64))  # any leading shape
    torch.testing.assert_close(y.view(50, 32), plain(x))


@needs_fbgemm
def test_kernels_agree_with_each_other():
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 48)
    x = torch.randn(40, 96)
    a, b = Int8Linear(lin, kernel="int_mm", qmax=63), Int8Linear(lin, kernel="fbgemm", qmax=63)
    # same weights; activations: int_mm symmetric 8-bit per token, fbgemm asymmetric 8-bit over [-1, 1]
    assert torch.equal(a.weight_t, b.weight_t)
    assert ((a(x) - b(x)).norm() / a(x).norm()).item() < 0.01


@needs_fbgemm
def test_fbgemm_never_saturates_on_worst_case_inputs():
    """Every activation at its row maximum and every weight at +max: vpmaddubsw's int16 pair sums are at their
    largest. The layer must still equal the float one (7-bit weights on CPUs without VNNI)."""
    lin = torch.nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.5)
    x = torch.ones(4, 256)
    x[1] *= -1
    x[2, ::2] = -1  # a row of +-1: the asymmetric quantizer's full range
    q = Int8Linear(lin, kernel="fbgemm")
    torch.testing.assert_close(q(x), lin(x), rtol=0.02, atol=0.02)
    assert weight_qmax("fbgemm") == (127 if cpu.detect().vnni else 63)


@needs_fbgemm
def test_fbgemm_layers_copy_pickle_and_load_from_8_bit_tensors():
    torch.manual_seed(2)
    lin = torch.nn.Linear(32, 16)
    x = torch.randn(7, 32)
    q = Int8Linear(lin, kernel="fbgemm")
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        torch.testing.assert_close(clone(x), q(x))
    full = Int8Linear(lin, kernel="int_mm")  # 8-bit weights, as a VNNI machine saves them
    loaded = Int8Linear.from_quantized(full.weight_t, full.scale, full.bias, kernel="fbgemm")
    assert int(loaded.weight_t.abs().max()) <= weight_qmax("fbgemm")
    assert ((loaded(x) - lin(x)).norm() / lin(x).norm()).item() < 0.05


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_kernel_holds_the_bound_on_a_tiny_model(kernel, tiny_dir, one_thread):
    model, _ = load_pretrained(tiny_dir)
    model.eval()
    tok = Tokenizer.from_dir(tiny_dir)
    ids = tok.encode(TEXTS, max_length=64).ids
    ref = pooled(model, ids)
    quantize_linears(model, kernel=kernel)
    assert all(m.kernel == kernel for m in model.modules() if isinstance(m, Int8Linear))
    assert (pooled(model, ids) * ref).sum(1).min() > 0.99


TEXTS = ["Shares fell sharply after the warning.", "hi", "The minister said the rules would change next year.",
         "omg the train is late AGAIN lol", "What is the difference between a list and a tuple?"]


def pooled(model, ids) -> np.ndarray:
    eng = Engine()
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for idx, flat, types, packing in eng.batches(ids, None, torch.device("cpu")):
            h = model.forward_packed(flat, packing, types)
            s = h.new_zeros(packing.batch_size, h.shape[1]).index_add_(0, packing.segment_ids(), h)
            out[idx] = torch.nn.functional.normalize(s, dim=1).numpy()
    return out


# ---- dtype="auto" ----------------------------------------------------------------------------------------------
def test_auto_options_are_checked():
    with pytest.raises(ValueError, match="auto chooses int8"):
        EngineOptions(dtype="auto", int8=True)
    with pytest.raises(ValueError, match="kernel"):
        EngineOptions(int8=True, kernel="vnni")


def stub_kernels(monkeypatch, order: tuple[str, ...], kernel: str = "fbgemm" if HAS_FBGEMM else "int_mm"):
    choice = KernelChoice(kernel, 7 if kernel == "fbgemm" else 8, "bf16" in order, order, "capability")
    monkeypatch.setattr(cpu, "kernels", lambda: choice)
    return choice


def load_tiny(tiny_dir, **options):
    model, _ = load_pretrained(tiny_dir)
    eng = Engine(EngineOptions(**options))
    eng.prepare(model, Tokenizer.from_dir(tiny_dir), torch.device("cpu"), "tiny")
    return model, eng


def test_auto_takes_the_first_precision_within_the_bound(tiny_dir, monkeypatch, one_thread):
    stub_kernels(monkeypatch, ("int8", "fp32"))
    model, eng = load_tiny(tiny_dir, dtype="auto")
    assert eng.precision == "int8" and eng.auto_cosine >= engine.AUTO_MIN_COSINE
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert "auto" in eng.describe()


def test_auto_falls_back_to_exact_fp32_below_the_bound(tiny_dir, monkeypatch, one_thread):
    """A bound no int8 model meets: auto undoes the quantization and runs the untouched fp32 weights."""
    stub_kernels(monkeypatch, ("int8", "bf16", "fp32"))
    monkeypatch.setattr(engine, "AUTO_MIN_COSINE", 1.0 + 1e-6)
    model, eng = load_tiny(tiny_dir, dtype="auto")
    ref, _ = load_pretrained(tiny_dir)
    assert eng.precision == "fp32" and eng.dtype == "fp32" and not eng.int8
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_auto_picks_bf16_where_it_comes_first(tiny_dir, monkeypatch, one_thread):
    stub_kernels(monkeypatch, ("bf16", "int8", "fp32"))
    model, eng = load_tiny(tiny_dir, dtype="auto")
    assert eng.precision == "bf16" and model.layers[0].Wqkv.weight.dtype == torch.bfloat16
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


def test_auto_decision_is_cached_per_model(tiny_dir, monkeypatch, one_thread, own_cache_dir):
    stub_kernels(monkeypatch, ("int8", "fp32"))
    _, first = load_tiny(tiny_dir, dtype="auto")
    passes = []
    real = Engine._pooled
    monkeypatch.setattr(Engine, "_pooled", lambda *a: passes.append(1) or real(*a))
    model, again = load_tiny(tiny_dir, dtype="auto")
    assert passes == [] and again.precision == first.precision and again.auto_cosine == first.auto_cosine
    assert len(list((own_cache_dir / "int8").glob("*.safetensors"))) == 1  # the calibration maxima
    with torch.no_grad():  # other weights: another decision
        model, _ = load_pretrained(tiny_dir)
        model.layers[0].Wqkv.weight.mul_(1.5)
        eng = Engine(EngineOptions(dtype="auto"))
        eng.prepare(model, Tokenizer.from_dir(tiny_dir), torch.device("cpu"), "tiny")
    assert passes


def test_int8_calibration_is_cached_and_gives_the_same_layers(tiny_dir, one_thread, own_cache_dir):
    a, _ = load_tiny(tiny_dir, int8=True)
    assert len(list((own_cache_dir / "int8").glob("*.safetensors"))) == 1
    b, _ = load_tiny(tiny_dir, int8=True)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_auto_respects_the_bound_on_minilm(minilm):
    """The real model: auto's choice keeps the stated bound on texts it was not calibrated on."""
    auto = bertkit.load(dtype="auto")
    assert auto.engine.auto_cosine >= engine.AUTO_MIN_COSINE
    texts = [*TEXTS, "Rain, then snow on higher ground.", "The striker scored twice in the second half."]
    assert (auto.embed(texts) * minilm.embed(texts)).sum(1).min() >= engine.AUTO_MIN_COSINE
    if auto.engine.precision == "int8":
        assert auto.engine.kernel == cpu.kernels().int8


def test_every_inference_command_takes_dtype_auto():
    import argparse

    from bertkit.cli.engine_args import add_engine_args, engine_from_args

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_from_args(p.parse_args(["--dtype", "auto"])).dtype == "auto"
    with pytest.raises(ValueError, match="auto chooses int8"):
        engine_from_args(p.parse_args(["--dtype", "auto", "--int8"]))


def test_embed_cli_with_dtype_auto(tiny_dir, tmp_path, one_thread):
    from bertkit.cli.main import main

    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    assert main(["-q", "embed", str(tiny_dir), "-i", str(src), "-o", str(tmp_path / "v.npy"), "--dtype", "auto"]) == 0
    ref = bertkit.load(tiny_dir).embed(TEXTS)
    assert (np.load(tmp_path / "v.npy") * ref).sum(1).min() >= engine.AUTO_MIN_COSINE
    assert main(["-q", "embed", str(tiny_dir), "-i", str(src), "-o", str(tmp_path / "w.npy"), "--dtype", "auto",
                 "--int8"]) == 2
