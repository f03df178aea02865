"""Mirror-BERT: span-masked views, sentence extraction, the symmetric loss and a tiny run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bertkit.model.dropout import Dropout
from bertkit.retrieval.biencoder import in_batch_loss, pair_batches
from bertkit.retrieval.mirror import (
    MirrorBiEncoder,
    mask_span,
    mirror_bert,
    mirror_views,
    raw_sentences,
    set_dropout,
)
from bertkit.train.engine import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
MASK = 103


@given(st.lists(st.integers(1000, 2000), min_size=0, max_size=12), st.integers(0, 4), st.integers(0, 10**6))
def test_mask_span_masks_one_inner_run_or_nothing(inner, span, seed):
    ids = [101, *inner, 102]
    out = mask_span(ids, span, MASK, np.random.default_rng(seed))
    assert len(out) == len(ids) and out[0] == 101 and out[-1] == 102
    masked = [i for i, t in enumerate(out) if t == MASK]
    if span == 0 or len(inner) <= span:
        assert out == ids  # a sentence keeps at least one visible token
    else:
        assert len(masked) == span and masked == list(range(masked[0], masked[0] + span))
        assert [t for i, t in enumerate(out) if t != MASK] == [t for i, t in enumerate(ids) if i not in masked]


def test_views_are_seeded_by_epoch():
    ids = [[101, *range(1000, 1010), 102]] * 20
    a1, m1 = mirror_views(ids, 2, MASK, seed=1, epoch=0)
    a2, m2 = mirror_views(ids, 2, MASK, seed=1, epoch=0)
    assert a1 == a2 and m1 == m2
    assert a1 != m1  # the two views of a sentence mask different spans (almost surely over 20 sentences)
    assert mirror_views(ids, 2, MASK, seed=1, epoch=1)[0] != a1


def test_raw_sentences_split_dedupe_and_sample():
    text = ("Shares fell on Monday. Oil prices rose sharply again! Too short.\n"
            "Shares fell on Monday.\n\nA new line here.")
    assert raw_sentences([text], min_words=3) == ["Shares fell on Monday.", "Oil prices rose sharply again!",
                                                  "A new line here."]
    many = [f"sentence number {i} is here" for i in range(100)]
    sample = raw_sentences(many, max_texts=10, seed=0)
    assert len(sample) == 10 and sample == raw_sentences(many, max_texts=10, seed=0) and set(sample) <= set(many)


def test_symmetric_loss_is_the_mean_of_both_directions():
    torch.manual_seed(0)
    a, m = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    keys = torch.arange(3)
    s = 25 * (a @ m.T)
    want = (F.cross_entropy(s, keys) + F.cross_entropy(s.T, keys)) / 2
    got = (in_batch_loss(a, m, keys, 25.0) + in_batch_loss(m, a, keys, 25.0)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_tiny_mirror_run(tmp_path, minilm_dir):
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path / "base", minilm_dir)  # saved with dropout 0: Mirror-BERT sets its own
    texts = [f"the {w} sat on mat number {i}" for i, w in enumerate(["cat", "dog", "bird", "fox", "cow", "owl"])]
    result = mirror_bert(tmp_path / "out", texts, model=str(tmp_path / "base"), max_length=16,
                         training=TrainConfig(max_steps=3, batch_size=3, lr=1e-3, progress=False))
    assert result.state.step == 3
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.0  # the training-only dropout is not written into the model
    import bertkit

    before = bertkit.load(tmp_path / "base").embed(texts[:2])
    after = bertkit.load(tmp_path / "out").embed(texts[:2])
    assert not np.allclose(before, after)  # it trained
    with pytest.raises(ValueError, match="at least 2 distinct"):
        mirror_bert(tmp_path / "o2", ["same", "same"], model=str(tmp_path / "base"))


def test_dropout_reaches_every_layer_and_the_views_differ(minilm):
    import copy

    model = copy.deepcopy(minilm.model)
    set_dropout(model, 0.25)
    assert all(m.p == 0.25 for m in model.modules() if isinstance(m, Dropout))
    assert all(layer.attn_dropout == 0.25 for layer in model.layers)
    bi = MirrorBiEncoder(model).train()
    ids = minilm.tokenize(["one sentence here", "another one"]).ids
    b = pair_batches(ids, ids, [0, 1], 2, seed=0, epoch=0)[0]
    with torch.no_grad():
        a, m = bi.embed(b.q_ids, b.q_packing), bi.embed(b.d_ids, b.d_packing)
    assert not torch.allclose(a, m)  # identical inputs, different dropout masks
