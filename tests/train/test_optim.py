import math

import pytest
import torch

from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.heads import SequenceClassifier
from bertkit.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


@pytest.fixture
def tiny():
    cfg = EncoderConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return SequenceClassifier(BertModel(cfg), num_labels=2)


def test_no_decay_on_biases_and_layernorm(tiny):
    groups = param_groups(tiny, lr=1e-3, weight_decay=0.1)
    for g in groups:
        for name in g["names"]:
            is_bias_or_norm = name.endswith(".bias") or "norm" in name
            assert (g["weight_decay"] == 0.0) == is_bias_or_norm, name
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(tiny.parameters()))


def test_layerwise_decay(tiny):
    groups = param_groups(tiny, lr=1.0, layer_decay=0.5)
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert lr_of["classifier.weight"] == 1.0 and lr_of["encoder.pooler.dense.weight"] == 1.0
    assert lr_of["encoder.layers.2.Wqkv.weight"] == 0.5
    assert lr_of["encoder.layers.0.Wqkv.weight"] == 0.125
    assert lr_of["encoder.embeddings.word.weight"] == 0.0625
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(tiny, lr=1.0, layer_decay=0.0)


def test_frozen_parameters_are_left_out(tiny):
    for p in tiny.encoder.embeddings.parameters():
        p.requires_grad_(False)
    names = {n for g in param_groups(tiny, lr=1.0) for n in g["names"]}
    assert not any("embeddings" in n for n in names)


def test_schedules():
    assert [lr_factor(s, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 10) == 1.0 and lr_factor(7, 4, 10) == 0.5 and lr_factor(10, 4, 10) == 0.0
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(9, 0, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 0, 10, "step")


def test_scheduler_drives_every_group(tiny):
    opt = build_optimizer(tiny, lr=2e-3, layer_decay=0.5)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6)
    base = [g["initial_lr"] for g in opt.param_groups]
    seen = []
    for _ in range(6):
        seen.append([g["lr"] / b for g, b in zip(opt.param_groups, base, strict=True)])
        opt.step()
        sched.step()
    for row, want in zip(seen, [lr_factor(s, 2, 6) for s in range(6)], strict=True):
        assert all(x == pytest.approx(want) for x in row)
    assert isinstance(opt, torch.optim.AdamW)
