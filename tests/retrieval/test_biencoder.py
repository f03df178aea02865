"""In-batch negatives loss, batching, and a tiny bi-encoder run whose output loads in sentence-transformers."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertkit.retrieval.biencoder import in_batch_loss, pair_batches, train_embeddings
from bertkit.retrieval.data import load_retrieval_files
from bertkit.train.engine import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_against_hand_computed_case():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    d = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    s = 20 * (q @ d.T)
    want = (-(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))) / 2
    assert in_batch_loss(q, d, torch.tensor([0, 1]), 20.0).item() == pytest.approx(want.item(), rel=1e-6)
    # query 0: 20 * 0.8 = 16 to its own, 0 to the other: CE = log(1 + e^-16)
    assert -(s[0, 0] - torch.logsumexp(s[0], 0)).item() == pytest.approx(math.log1p(math.exp(-16)), abs=1e-6)


def test_a_copy_of_the_positive_is_not_a_negative():
    q = F.normalize(torch.randn(3, 4), dim=-1)
    d = torch.cat([q[:1], q[:1], F.normalize(torch.randn(1, 4), dim=-1)])  # docs 0 and 1 are the same document
    masked = in_batch_loss(q, d, torch.tensor([7, 7, 3]), 20.0)
    scores = 20 * (q @ d.T)
    scores[0, 1] = scores[1, 0] = float("-inf")
    assert masked.item() == pytest.approx(F.cross_entropy(scores, torch.arange(3)).item(), rel=1e-6)


def test_pair_batches_are_seeded_and_drop_a_lone_pair():
    q, d = [[1, 5, 2]] * 5, [[1, 6, 7, 2]] * 5
    a = pair_batches(q, d, list(range(5)), 2, seed=1, epoch=0)
    assert [b.num_units for b in a] == [2, 2]  # 5 pairs: the last, alone, has no negative
    b = pair_batches(q, d, list(range(5)), 2, seed=1, epoch=0)
    assert all(torch.equal(x.d_keys, y.d_keys) for x, y in zip(a, b, strict=True))


def test_tiny_run_saves_a_sentence_transformers_directory(tmp_path, minilm_dir):
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path / "base", minilm_dir)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query number {i}"}) + "\n"
                                              for i in range(8)))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"document {i} text"}) + "\n"
                                              for i in range(8)))
    (tmp_path / "r.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(8)))
    data = load_retrieval_files(tmp_path / "q.jsonl", tmp_path / "d.jsonl", tmp_path / "r.tsv")
    out = tmp_path / "out"
    result = train_embeddings(out, data, data, model=str(tmp_path / "base"), max_length=32,
                              training=TrainConfig(max_steps=2, batch_size=4, lr=1e-3, progress=False))
    assert result.state.step == 2 and result.dev is not None and "ndcg@10" in result.dev
    import bertkit

    ours = bertkit.load(out).embed(["query number 3", "document 5 text"])
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(["query number 3", "document 5 text"])
    assert np.abs(ours - theirs).max() < 1e-4
