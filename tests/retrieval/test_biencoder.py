"""In-batch negatives loss, batching, and a tiny bi-encoder run whose output loads in sentence-transformers."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertkit.retrieval.biencoder import distill_loss, group_scores, in_batch_loss, pair_batches, train_embeddings
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


def test_hard_negatives_join_the_in_batch_negatives():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(2, 4), dim=-1)
    d = F.normalize(torch.randn(4, 4), dim=-1)  # 2 positives, then query 0's and query 1's hard negative
    s = 20 * (q @ d.T)
    want = (-(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))) / 2
    assert in_batch_loss(q, d, torch.tensor([0, 1, 2, 3]), 20.0).item() == pytest.approx(want.item(), rel=1e-6)
    # query 1's hard negative is query 0's positive (key 0): not a negative for query 0, still one for query 1
    masked = in_batch_loss(q, d, torch.tensor([0, 1, 2, 0]), 20.0)
    s0 = s[0].clone()
    s0[3] = float("-inf")
    want = (-(s0[0] - torch.logsumexp(s0, 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))) / 2
    assert masked.item() == pytest.approx(want.item(), rel=1e-6)


def test_group_scores_and_distillation_loss():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])  # positives, then one negative each
    assert torch.allclose(group_scores(q, d), torch.tensor([[1.0, 0.6], [1.0, 0.6]]))
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # KL(uniform || softmax([2, 0])) = sum 0.5 * (log 0.5 - log p_i)
    p = torch.softmax(student, -1)[0]
    want = 0.5 * (math.log(0.5) - math.log(p[0])) + 0.5 * (math.log(0.5) - math.log(p[1]))
    assert distill_loss(student, teacher).item() == pytest.approx(want, rel=1e-6)
    assert distill_loss(teacher * 3, teacher * 3).item() == pytest.approx(0.0, abs=1e-7)
    assert distill_loss(student, student * 2, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_pair_batches_lay_out_positives_then_hard_negatives():
    q = [[1, 10 + i, 2] for i in range(4)]
    d = [[1, 20 + i, 2] for i in range(4)]
    negs = [[[1, 30 + i, 2], [1, 40 + i, 2]] for i in range(4)]
    keys = [[100 + i, 200 + i] for i in range(4)]
    teacher = np.arange(12, dtype=np.float32).reshape(4, 3)
    (b, *_) = pair_batches(q, d, [0, 1, 2, 3], 4, seed=0, epoch=0, negatives=negs, neg_keys=keys, teacher=teacher)
    order = [int(b.q_ids[3 * i + 1]) - 10 for i in range(4)]
    ids = b.d_ids.view(-1, 3)[:, 1].tolist()
    assert ids[:4] == [20 + i for i in order]
    assert ids[4:] == [x for i in order for x in (30 + i, 40 + i)]
    assert b.d_keys.tolist() == order + [k for i in order for k in (100 + i, 200 + i)]
    assert torch.equal(b.teacher, torch.from_numpy(teacher[order]))


def test_mined_negatives_are_never_relevant(minilm):
    from bertkit.retrieval.data import RetrievalData
    from bertkit.retrieval.search import mine_hard_negatives

    docs = {f"d{i}": t for i, t in enumerate(["the cat sat on the mat", "a cat on a mat", "stock markets fell",
                                               "shares dropped sharply", "the striker scored", "goal in the final"])}
    data = RetrievalData({"q0": "cat on mat", "q1": "markets fall"}, docs, {"q0": {"d0": 1}, "q1": {"d2": 1, "d3": 1}})
    negs = mine_hard_negatives(minilm, data, 2, top=4)
    assert negs["q0"][0] == "d1"  # the near duplicate is the hardest negative
    assert all(len(v) == 2 and not set(v) & set(data.qrels[q]) for q, v in negs.items())
    assert mine_hard_negatives(minilm, data, 2, top=4, sample=True, seed=3) == \
        mine_hard_negatives(minilm, data, 2, top=4, sample=True, seed=3)
    short = mine_hard_negatives(minilm, data, 5, top=5)  # q1 has 2 relevant of 6: 4 candidates left
    assert len(short["q0"]) == 5 and len(short["q1"]) == 4


def test_tiny_run_with_hard_negatives_and_a_teacher(tmp_path, minilm_dir):
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path / "base", minilm_dir)
    from bertkit.retrieval.data import RetrievalData

    data = RetrievalData({f"q{i}": f"query number {i}" for i in range(6)},
                         {f"d{i}": f"document {i} text" for i in range(6)}, {f"q{i}": {f"d{i}": 1} for i in range(6)})
    negs = {f"q{i}": [f"d{(i + 1) % 6}"] for i in range(6)}

    class Teacher:
        calls = 0

        def score_pairs(self, queries, docs):
            Teacher.calls += len(docs)
            return np.array([3.0 if q.split()[-1] == d.split()[1] else 0.0 for q, d in zip(queries, docs, strict=True)])

    result = train_embeddings(tmp_path / "out", data, model=str(tmp_path / "base"), max_length=16, negatives=negs,
                              teacher=Teacher(), training=TrainConfig(max_steps=2, batch_size=3, progress=False))
    assert result.state.step == 2 and Teacher.calls == 12  # 6 groups of 1 + 1
    with pytest.raises(ValueError, match="only 1 pairs"):  # the others have fewer than q0's two
        train_embeddings(tmp_path / "o2", data, model=str(tmp_path / "base"), negatives={**negs, "q0": ["d1", "d2"]})
    with pytest.raises(ValueError, match="unknown documents: nope"):
        train_embeddings(tmp_path / "o4", data, model=str(tmp_path / "base"), negatives={**negs, "q0": ["nope"]})
    with pytest.raises(ValueError, match="needs hard negatives"):
        train_embeddings(tmp_path / "o3", data, model=str(tmp_path / "base"), teacher=Teacher())
