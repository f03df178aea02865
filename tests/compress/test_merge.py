"""Model merging: task vectors, DARE, task arithmetic, MultiHeadModel routing and save/load, shape checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bertkit.compress.merge import (
    MultiHeadModel,
    dare,
    merge,
    merge_task_models,
    task_vectors,
)
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.task_model import TaskModel, build_head

TEXTS = ["a good film", "a bad film", "great acting and a fine plot", "dull and far too long"]
SENTENCES = [["Alice", "lives", "in", "Paris"], ["Bob", "went", "to", "Berlin", "yesterday"]]


def tiny_encoder(seed: int = 0, **overrides) -> BertModel:
    kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    torch.manual_seed(seed)
    return BertModel(EncoderConfig(**kw)).eval()


@torch.no_grad()
def finetuned(base: BertModel, seed: int, scale: float = 0.01) -> BertModel:
    """A stand-in for a model fine-tuned from ``base``: every weight nudged by seeded noise."""
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return WordPieceTokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def base():
    return tiny_encoder()


def task_model(encoder, tokenizer, task, labels, seed):
    torch.manual_seed(seed)  # the head's weights
    head = build_head(encoder, task, len(labels)).eval()
    return TaskModel(head, tokenizer, task, list(labels), 32)


def test_task_vectors_add_back_exactly(base):
    ft = finetuned(base, seed=1)
    delta = task_vectors(base, ft)
    assert set(delta) == set(base.state_dict())
    assert all(d.dtype == torch.float64 for d in delta.values())
    for k, b in base.state_dict().items():
        assert torch.equal((b.double() + delta[k]).to(b.dtype), ft.state_dict()[k]), k
    assert all(not d.any() for d in task_vectors(base, base).values())


def test_merging_one_model_gives_it_back(base):
    ft = finetuned(base, seed=1)
    for method in ("task_arithmetic", "dare"):
        merged = merge(base, [ft], method=method, drop_rate=0.0, scaling=1.0)
        assert merged is not base
        for k, v in ft.state_dict().items():
            assert torch.equal(merged.state_dict()[k], v), k
    # the base itself is left alone
    assert all(torch.equal(v, tiny_encoder().state_dict()[k]) for k, v in base.state_dict().items())


def test_dare_with_no_drop_is_task_arithmetic(base):
    models = [finetuned(base, seed=1), finetuned(base, seed=2)]
    kw = dict(weights=[0.7, 0.4], scaling=0.8)
    plain = merge(base, models, method="task_arithmetic", **kw).state_dict()
    dared = merge(base, models, method="dare", drop_rate=0.0, seed=5, **kw).state_dict()
    assert all(torch.equal(plain[k], dared[k]) for k in plain)
    # default weights are the mean: with scaling 1 the merge is the models' average
    avg = merge(base, models).state_dict()
    for k, v in avg.items():
        want = (models[0].state_dict()[k].double() + models[1].state_dict()[k].double()) / 2
        torch.testing.assert_close(v.double(), want, atol=1e-7, rtol=0)


def test_merge_dare_is_base_plus_dared_task_vectors(base):
    models = {"a": finetuned(base, seed=1), "b": finetuned(base, seed=2)}
    merged = merge(base, models, weights=[1.0, 0.5], method="dare", drop_rate=0.8, scaling=0.6, seed=3).state_dict()
    deltas = [dare(task_vectors(base, m), 0.8, seed=3 + i) for i, m in enumerate(models.values())]
    for k, b in base.state_dict().items():
        want = b.double() + 0.6 * (deltas[0][k] + 0.5 * deltas[1][k])
        torch.testing.assert_close(merged[k].double(), want, atol=1e-7, rtol=0)
    w = deltas[0]["layers.0.mlp_in.weight"]
    assert 0.75 < float((w == 0).double().mean()) < 0.85  # about drop_rate of the entries are gone


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_dare_is_unbiased(p):
    delta = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = 400
    draws = torch.stack([dare(delta, p, seed=s) for s in range(n)])
    kept = draws != 0
    assert float(kept.double().mean()) == pytest.approx(1 - p, abs=0.01)
    assert torch.allclose(draws[kept], (delta / (1 - p)).expand_as(draws)[kept])
    # each entry's mean over seeds: E = delta, sd = |delta| sqrt(p / ((1 - p) n))
    z = (draws.mean(0) - delta) / (delta.abs() * (p / ((1 - p) * n)) ** 0.5)
    assert float(z.abs().max()) < 5.0  # 2000 entries: a 5-sigma miss has odds ~1e-3 overall
    assert abs(float(z.mean())) < 5 / len(delta) ** 0.5  # and no shared bias across entries
    assert torch.equal(dare(delta, 0.0), delta)
    assert torch.equal(dare(delta, p, seed=7), dare(delta, p, seed=7))
    with pytest.raises(ValueError, match="drop_rate must be in"):
        dare(delta, 1.0)


def test_mismatched_models_are_refused(base):
    narrow = tiny_encoder(intermediate_size=48)
    with pytest.raises(ValueError, match=r"model 1: tensor 'layers.0.mlp_in.weight' has shape \(48, 32\)"):
        merge(base, [finetuned(base, 1), narrow])
    with pytest.raises(ValueError, match=r"tensor 'layers.0.mlp_in.weight' has shape \(48, 32\), the base's has"):
        task_vectors(base, narrow)
    with pytest.raises(ValueError, match=r"lacks tensor 'layers\.2"):
        merge(tiny_encoder(num_hidden_layers=3), [base])
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        merge(base, {"relu model": tiny_encoder(hidden_act="relu")})
    with pytest.raises(ValueError, match="unknown merge method 'ties'"):
        merge(base, [base], method="ties")
    with pytest.raises(ValueError, match="1 weights for 2 models"):
        merge(base, [base, base], weights=[1.0])


def test_multihead_routes_each_task_to_its_head(base, tokenizer, tmp_path):
    sentiment = task_model(finetuned(base, 1), tokenizer, "classification", ["neg", "pos"], seed=10)
    topic = task_model(finetuned(base, 2), tokenizer, "classification", ["arts", "sport", "tech"], seed=11)
    ner = task_model(finetuned(base, 3), tokenizer, "ner", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], seed=12)
    sources = {"sentiment": sentiment, "topic": topic, "ner": ner}
    mh = merge_task_models(base, sources, method="dare", drop_rate=0.5, scaling=1.0)
    assert mh.tasks == ["sentiment", "topic", "ner"]
    # each task answers with its own head on the merged encoder: the same as a TaskModel built by hand
    for name, src in sources.items():
        enc = copy.deepcopy(mh.encoder)
        head = build_head(enc, src.task, src.head.num_labels).eval()
        head.classifier.load_state_dict(src.head.classifier.state_dict())
        ref = TaskModel(head, tokenizer, src.task, src.labels, 32)
        inputs = SENTENCES if src.task == "ner" else TEXTS
        assert mh.predict(inputs, task=name) == ref.predict(inputs)
    assert set(mh.predict(TEXTS, task="topic")[0]["probabilities"]) == {"arts", "sport", "tech"}
    assert set(mh.predict(TEXTS, task="sentiment")[0]["probabilities"]) == {"neg", "pos"}
    assert len(mh.predict(SENTENCES, task="ner")[1]["tags"]) == 5
    with pytest.raises(KeyError, match="unknown task 'pos'; this model has 'sentiment', 'topic', 'ner'"):
        mh.predict(TEXTS, task="pos")

    # with unchanged encoders the merge is the base, and each task predicts exactly as its source model
    same = {"sentiment": task_model(copy.deepcopy(base), tokenizer, "classification", ["neg", "pos"], seed=10),
            "ner": task_model(copy.deepcopy(base), tokenizer, "ner", ["O", "B-PER", "I-PER"], seed=12)}
    mh0 = merge_task_models(base, same)
    assert mh0.predict(TEXTS, task="sentiment") == same["sentiment"].predict(TEXTS)
    assert mh0.predict(SENTENCES, task="ner") == same["ner"].predict(SENTENCES)

    # save / load round trip
    mh.save(tmp_path / "mh")
    manifest = json.loads((tmp_path / "mh" / "multihead.json").read_text())
    assert manifest["tasks"]["topic"] == {"task": "classification", "problem_type": "single_label_classification",
                                          "labels": ["arts", "sport", "tech"], "max_length": 32,
                                          "head": "heads/topic.safetensors"}
    assert (tmp_path / "mh" / "heads" / "ner.safetensors").is_file()
    loaded = MultiHeadModel.load(tmp_path / "mh")
    assert loaded.tasks == mh.tasks
    for name in mh.tasks:
        inputs = SENTENCES if name == "ner" else TEXTS
        assert loaded.predict(inputs, task=name) == mh.predict(inputs, task=name)
    assert "id2label" not in json.loads((tmp_path / "mh" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"no multihead\.json"):
        MultiHeadModel.load(tmp_path)
    with pytest.raises(ValueError, match="task name 'a/b'"):
        MultiHeadModel.from_task_models(mh.encoder, {"a/b": sentiment})
