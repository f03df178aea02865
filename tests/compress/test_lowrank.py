"""Low-rank factorisation: SVD ranks and errors, the size rule, factorised models, save/load, fine-tune."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bertkit.compress.lowrank import (
    LowRankLinear,
    densify,
    factorize,
    factorize_model,
    finetune_lowrank,
    load_lowrank,
    low_rank_factors,
    lowrank_layers,
    max_useful_rank,
    rank_for_energy,
    reconstruction_error,
    save_lowrank,
)
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.task_model import TaskModel, build_head

TEXTS = ["a good film", "a bad film", "great acting and a fine plot", "dull and far too long",
         "I loved it", "I hated it", "wonderful", "terrible"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg", "pos", "neg"]


def tiny_encoder(seed: int = 0, **overrides) -> BertModel:
    kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    torch.manual_seed(seed)
    return BertModel(EncoderConfig(**kw)).eval()


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return WordPieceTokenizer.from_dir(minilm_dir)


def task_model(tokenizer, task: str = "classification", labels=("neg", "pos"), seed: int = 0) -> TaskModel:
    head = build_head(tiny_encoder(seed), task, len(labels)).eval()
    return TaskModel(head, tokenizer, task, list(labels), 32)


def matrix_with_singular_values(s: list[float], n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    P, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sv = torch.zeros(n, dtype=torch.float64)
    sv[:len(s)] = torch.tensor(s, dtype=torch.float64)
    return (P * sv) @ Q.T


def test_error_falls_with_rank_and_vanishes_at_full_rank():
    w = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
    errors = [reconstruction_error(w, *low_rank_factors(w, r)) for r in range(1, 17)]
    assert all(b <= a + 1e-7 for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.5
    assert errors[-1] < 1e-6
    U, V = low_rank_factors(w, 5)
    assert U.shape == (24, 5) and V.shape == (5, 16) and U.dtype == w.dtype
    # balanced split: both factors carry sqrt of the singular values
    torch.testing.assert_close(U.norm(), V.norm(), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="rank 17 is out of range"):
        low_rank_factors(w, 17)


def test_energy_picks_documented_rank():
    # s^2 = 16, 9, 4, 1 (total 30): prefixes keep 16/30 = .533, 25/30 = .833, 29/30 = .967, 1
    w = matrix_with_singular_values([4.0, 3.0, 2.0, 1.0])
    s = torch.linalg.svdvals(w)
    expected = {0.5: 1, 0.53: 1, 0.54: 2, 0.8: 2, 0.9: 3, 0.96: 3, 0.97: 4, 1.0: 4}
    for energy, rank in expected.items():
        assert rank_for_energy(s, energy) == rank, energy
    with pytest.raises(ValueError, match="energy must be in"):
        rank_for_energy(s, 0.0)
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.copy_(w.float())
    layer = factorize(lin, energy=0.9)
    assert isinstance(layer, LowRankLinear) and layer.rank == 3
    # Eckart-Young: the error is the dropped singular values' share, sqrt(1/30)
    assert reconstruction_error(lin.weight, layer.U, layer.V) == pytest.approx((1 / 30) ** 0.5, rel=1e-4)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), x @ (layer.U @ layer.V).T + lin.bias)


def test_never_larger_than_dense():
    assert max_useful_rank(16, 16) == 7  # 7 * 32 = 224 < 256 <= 8 * 32
    assert max_useful_rank(32, 64) == 21
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    assert factorize(lin, energy=1.0) is lin  # full rank of a random matrix: kept dense
    assert factorize(lin, rank=8) is lin  # 8 * (16 + 16) == 16 * 16: no saving
    assert isinstance(factorize(lin, rank=7), LowRankLinear)
    with pytest.raises(ValueError, match="rank 17 is out of range"):
        factorize(lin, rank=17)
    enc = tiny_encoder()
    for energy in (0.3, 0.6, 0.9, 0.99, 1.0):
        report = factorize_model(tiny_encoder(), layers=("Wqkv", "attn_out", "mlp_in", "mlp_out"), energy=energy)
        for r in report.layers:
            assert r.params_after <= r.params_before
            if r.rank is None:
                assert "kept dense" in r.note and r.params_after == r.params_before
            else:
                assert r.rank * sum(r.shape) < r.shape[0] * r.shape[1]
    report = factorize_model(enc, energy=1.0)
    assert all(r.rank is None for r in report.layers) and not lowrank_layers(enc)


def test_factorize_model_report_and_paths():
    enc = tiny_encoder()
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    before = enc(ids, mask, path="reference").last_hidden_state
    report = factorize_model(enc, layers=("mlp_in", "layers.1.mlp_out"), ranks={"mlp_in": 12, "layers.1.mlp_out": 4})
    assert [r.name for r in report.layers] == ["layers.0.mlp_in", "layers.1.mlp_in", "layers.1.mlp_out"]
    assert [r.rank for r in report.layers] == [12, 12, 4]
    r = report.layers[0]
    assert r.shape == (64, 32) and r.params_before == 64 * 32 + 64 and r.params_after == 12 * 96 + 64
    assert r.error == pytest.approx((1 - r.energy_kept) ** 0.5, rel=1e-4)
    assert report.params_after < report.params_before and "layers.1.mlp_out" in str(report)
    assert isinstance(enc.layers[1].mlp_out, LowRankLinear) and type(enc.layers[0].mlp_out) is nn.Linear
    with torch.inference_mode():  # every path runs the factors (the in-place residual add included)
        outs = [enc(ids, mask, path=p).last_hidden_state for p in ("reference", "sdpa", "unpadded")]
    for o in outs[1:]:
        torch.testing.assert_close(o[mask.bool()], outs[0][mask.bool()], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[0], before)
    with pytest.raises(ValueError, match="already factorised"):
        factorize_model(enc, layers=("layers.1.mlp_out",), ranks=2)
    with pytest.raises(ValueError, match="unknown layer 'mlp'"):
        factorize_model(enc, layers=("mlp",))
    with pytest.raises(ValueError, match="not selected"):
        factorize_model(tiny_encoder(), layers=("mlp_in",), ranks={"mlp_out": 3})


def test_save_load_round_trip(tmp_path, tokenizer):
    tm = task_model(tokenizer)
    factorize_model(tm, layers=("Wqkv", "mlp_in", "mlp_out"), ranks={"Wqkv": 6, "mlp_in": 10, "mlp_out": 5})
    want = tm.predict(TEXTS)
    save_lowrank(tm, tmp_path / "lr")
    cfg = json.loads((tmp_path / "lr" / "config.json").read_text())
    assert cfg["lowrank"]["layers.0.Wqkv"] == 6 and cfg["id2label"] == {"0": "neg", "1": "pos"}
    state = load_file(tmp_path / "lr" / "model.safetensors")
    assert state["lowrank.layers.1.mlp_in.U"].shape == (64, 10)
    assert "bert.encoder.layer.0.intermediate.dense.weight" not in state
    assert "bert.encoder.layer.0.intermediate.dense.bias" in state  # biases keep their HF names
    loaded = load_lowrank(tmp_path / "lr")
    assert isinstance(loaded, TaskModel) and loaded.labels == ["neg", "pos"]
    assert {n: m.rank for n, m in lowrank_layers(loaded).items()} == cfg["lowrank"]
    assert "lowrank" not in loaded.head.encoder.config.extra
    assert loaded.predict(TEXTS) == want

    # an encoder alone; and densify gives a plain model with the same outputs
    enc = tiny_encoder(seed=3)
    factorize_model(enc, ranks=7)
    save_lowrank(enc, tmp_path / "enc")
    enc2 = load_lowrank(tmp_path / "enc")
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.inference_mode():
        torch.testing.assert_close(enc2(ids).last_hidden_state, enc(ids).last_hidden_state, atol=0, rtol=0)
        assert densify(enc2) == 4 and not lowrank_layers(enc2)
        torch.testing.assert_close(enc2(ids).last_hidden_state, enc(ids).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_load_errors_name_the_problem(tmp_path, tokenizer):
    tm = task_model(tokenizer)
    tm.save_pretrained(tmp_path / "dense")
    with pytest.raises(CheckpointError, match="no 'lowrank' section"):
        load_lowrank(tmp_path / "dense")
    factorize_model(tm, ranks=5)
    save_lowrank(tm, tmp_path / "lr")
    cfg_file = tmp_path / "lr" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["lowrank"]["layers.0.mlp_in"] = 6
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lowrank\.layers\.0\.mlp_in\.U/\.V have shapes"):
        load_lowrank(tmp_path / "lr")


def test_finetune_lowrank(tmp_path, tokenizer, one_thread):
    tm = task_model(tokenizer)
    factorize_model(tm, ranks=4)
    data = TaskData("classification", TEXTS, None, LABELS, None, "test")
    factors = {n: m.U.detach().clone() for n, m in lowrank_layers(tm).items()}
    embeddings = tm.head.encoder.embeddings.word.weight.detach().clone()
    state = finetune_lowrank(tm, data, steps=3, lr=1e-3, batch_size=4, only_factors=True, output_dir=tmp_path,
                             warmup_ratio=0.0)
    assert state.step == 3 and (tmp_path / "metrics.jsonl").is_file()
    assert all(not torch.equal(m.U, factors[n]) for n, m in lowrank_layers(tm).items())
    assert torch.equal(tm.head.encoder.embeddings.word.weight, embeddings)  # frozen, and unfrozen again after
    assert all(p.requires_grad for p in tm.head.parameters())
    state = finetune_lowrank(tm, data, steps=2, batch_size=8, dev=data, warmup_ratio=0.0)
    assert state.best is not None and not tm.head.training
    assert len(tm.predict(TEXTS)) == len(TEXTS)
