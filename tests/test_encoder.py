"""Encoder.embed / encode / token_states against sentence-transformers and transformers, and its edge cases."""

import logging

import numpy as np
import pytest
import torch

import bertkit
from bertkit.encoder import Encoder

TEXTS = [
    "A man is eating food.", "", "The new movie is awesome", "   ",
    "The cat sits outside on the mat while it rains. " * 60,  # longer than max_length
    "x", "Two dogs play in the park with a red ball and a stick.",
]


def test_default_names_resolve(minilm):
    assert minilm.source_dir == bertkit.load().source_dir
    assert minilm.model.path == "unpadded" and minilm.max_length == 256


def test_matches_sentence_transformers(minilm, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, batch_size=3)
    for path in ("unpadded", "sdpa", "reference"):
        enc = Encoder(minilm.model, minilm.tokenizer, minilm.max_length)
        enc.model.path = path
        got = enc.embed(TEXTS, batch_size=3)
        assert np.abs(got - ref).max() <= 1e-5, path
    minilm.model.path = "unpadded"


def test_encode_is_sentence_transformers_encode(minilm, minilm_dir):
    """``encode`` takes sentence-transformers' arguments and gives its outputs; the old token-state form warns."""
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    ref = ref_model.encode(TEXTS, batch_size=3)
    got = minilm.encode(TEXTS, batch_size=3)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
    assert np.abs(minilm.encode(TEXTS[0]) - ref_model.encode(TEXTS[0])).max() <= 1e-5  # one string: one vector
    assert np.abs(minilm.encode(TEXTS, normalize_embeddings=True) - ref).max() <= 1e-5  # already normalized
    tokens = ref_model.encode(TEXTS[:3], output_value="token_embeddings")
    for a, b in zip(minilm.encode(TEXTS[:3], output_value="token_embeddings"), tokens, strict=True):
        assert a.shape == tuple(b.shape) and np.abs(a - b.numpy()).max() <= 1e-4
    with pytest.raises(ValueError, match="output_value"):
        minilm.encode(TEXTS, output_value="tokens")
    with pytest.warns(DeprecationWarning, match="token_states"):
        old = minilm.encode(TEXTS[:2], TEXTS[2:4])  # the pre-0.2 form: (texts, pairs) -> token states
    for a, b in zip(old, minilm.token_states(TEXTS[:2], TEXTS[2:4]), strict=True):
        assert np.array_equal(a, b)


def test_cls_pooling_and_unnormalized(minilm, hf_minilm):
    texts = ["hello there", "a slightly longer sentence here"]
    batch = minilm.tokenize(texts)
    got = minilm.embed(texts, pooling="cls", normalize=False)
    for i, ids in enumerate(batch.ids):
        with torch.inference_mode():
            ref = hf_minilm(input_ids=torch.tensor([ids])).last_hidden_state[0, 0].numpy()
        assert np.abs(got[i] - ref).max() <= 1e-5
    normed = minilm.embed(texts, pooling="cls")
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)


def test_order_and_batch_size_invariance(minilm):
    base = minilm.embed(TEXTS, batch_size=32)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = minilm.embed([TEXTS[i] for i in perm], batch_size=2)
    assert np.abs(shuffled - base[perm]).max() <= 1e-5


def test_empty_inputs(minilm):
    assert minilm.embed([]).shape == (0, 384)
    assert minilm.token_states([]) == []
    e = minilm.embed(["", "   ", "\n"])
    assert np.abs(e - e[0]).max() < 1e-6  # all embedded as [CLS][SEP]
    ids = minilm.tokenize([""]).ids[0]
    assert ids == [minilm.tokenizer.cls_id, minilm.tokenizer.sep_id]


def test_truncation_reported_once(minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        minilm.embed(["word " * 400, "short", "word " * 300], batch_size=1)
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert msgs == ["2 of 3 texts were longer than max_length=256 tokens and were truncated"]


def test_encode_token_states(minilm, hf_minilm):
    texts = ["first text", "the second, longer text of the two"]
    states = minilm.token_states(texts)
    for text, s in zip(texts, states, strict=True):
        ids = minilm.tokenize([text]).ids[0]
        with torch.inference_mode():
            ref = hf_minilm(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        assert s.shape == ref.shape and np.abs(s - ref).max() <= 1e-5


def test_bad_arguments(minilm):
    with pytest.raises(TypeError, match="list of texts"):
        minilm.embed("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm.embed(["ok", None])
    with pytest.raises(ValueError, match="pooling"):
        minilm.embed(["x"], pooling="maximum")
    with pytest.raises(ValueError, match="batch_size"):
        minilm.embed(["x"], batch_size=0)


def test_info(minilm):
    info = minilm.info()
    assert info["parameters"] == 22_713_216
    assert info["layers"] == 6 and info["vocab_size"] == 30522 and info["execution_path"] == "unpadded"
    assert info["size_on_disk_mb"] > 80


def test_bbc_news_loader():
    from bertkit.data.corpora import load_bbc_news

    articles = load_bbc_news()
    assert len(articles) == 2225
    assert {a.topic for a in articles} == {"business", "entertainment", "politics", "sports", "tech"}
    assert articles[0].title == "Ad sales boost Time Warner profit"
    assert len(load_bbc_news(dedupe=True)) < 2225
