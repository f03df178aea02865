"""Cross-encoder re-ranker: losses by hand, hard-negative mining, batching, a toy training run, ranking, save/load,
transformers and sentence-transformers loading, bad input, and the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from bertkit.cli.main import main
from bertkit.encoder import Encoder
from bertkit.errors import CheckpointError
from bertkit.retrieval import data as retrieval_data
from bertkit.retrieval.data import RetrievalData, load_retrieval_files
from bertkit.retrieval.reranker import (
    Reranker,
    binary_loss,
    evaluate_reranking,
    group_batches,
    listwise_loss,
    rerank_run,
    train_reranker,
)
from bertkit.retrieval.search import mine_hard_negatives, retrieve, retrieve_scored
from bertkit.train.engine import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]


def toy_data(second_red: bool = False) -> RetrievalData:
    """Query 'c' -> document 'a c thing'; with ``second_red`` query 'red' has a second relevant document.

    Relevance depends on the pair only (each document is one query's positive and every other's negative), so
    a model can learn it only by reading query and document together.
    """
    docs = {f"d{i}": f"a {c} thing" for i, c in enumerate(COLORS)}
    qrels = {f"q{i}": {f"d{i}": 1.0} for i in range(len(COLORS))}
    if second_red:
        docs["d9"] = "one more red thing"
        qrels["q0"]["d9"] = 1.0
    return RetrievalData({f"q{i}": c for i, c in enumerate(COLORS)}, docs, qrels, source="toy")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """A tiny random BERT trained on the toy problem, every other document a negative (~3 s)."""
    out = tmp_path_factory.mktemp("reranker")
    data = toy_data()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_thread
    try:
        return train_reranker(out, data, data, model=str(tiny_dir), retriever=str(tiny_dir), negatives=5,
                              mine_top=5, max_length=32, dev_top=6,
                              training=TrainConfig(max_steps=150, batch_size=8, lr=2e-3, eval_every=50,
                                                   progress=False))
    finally:
        torch.set_num_threads(n)


def test_listwise_loss_by_hand():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    want = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(3)) / 2  # -log softmax(s)[0], row mean
    assert listwise_loss(s).item() == pytest.approx(want, rel=1e-6)


def test_binary_loss_by_hand():
    s = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    # label 1: log(1 + e^-x); label 0: log(1 + e^x); mean over the 4 pairs
    want = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(3))) / 4
    assert binary_loss(s).item() == pytest.approx(want, rel=1e-6)


def test_group_batches_keep_groups_and_undo_the_length_sort():
    ids = [[1] * n for n in (3, 5, 2, 7, 4, 6)]  # 3 groups of 2 pairs
    batches = group_batches(ids, [[0] * len(x) for x in ids], 2, 2, seed=0, epoch=0)
    assert [b.num_units for b in batches] == [2, 1]
    for b in batches:
        assert b.packing.lengths == sorted(b.packing.lengths, reverse=True)  # runs of equal lengths
        lengths = torch.tensor(b.packing.lengths)[b.unsort].view(-1, 2)  # back in group-major order
        assert all(tuple(row.tolist()) in {(3, 5), (2, 7), (4, 6)} for row in lengths)
    again = group_batches(ids, [[0] * len(x) for x in ids], 2, 2, seed=0, epoch=0)
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(batches, again, strict=True))


def test_mined_negatives_are_never_relevant(tiny_dir):
    data = toy_data(second_red=True)
    enc = Encoder.from_pretrained(tiny_dir)
    first = retrieve(enc, data, 7)
    for sample in (False, True):
        negs = mine_hard_negatives(enc, data, 3, top=4, seed=1, sample=sample)
        assert set(negs) == set(data.qrels)
        for q, ds in negs.items():
            assert len(ds) == 3 and not set(ds) & set(data.qrels[q])
            ranked = [d for d in first[q] if d not in data.qrels[q]]
            if sample:
                assert set(ds) <= set(ranked[:4])
            else:
                assert ds == ranked[:3]  # the hardest, in the retriever's order
    with pytest.raises(ValueError, match="n <= top"):
        mine_hard_negatives(enc, data, 5, top=4)


def test_trained_reranker_ranks_the_positive_first(trained):
    assert trained.state.step == 150 and trained.dev is not None and trained.dev["ndcg@10"] == 1.0
    r = Reranker.from_pretrained(trained.output_dir)
    docs = list(toy_data().docs.values())
    for i, c in enumerate(COLORS):
        ranking = r.rank(c, docs)
        assert ranking[0][0] == i, (c, ranking)
        assert sorted(i for i, _ in ranking) == list(range(len(docs)))
        scores = [s for _, s in ranking]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(r.score(c, docs)[[i for i, _ in ranking]], scores)
    assert r.rank("red", docs, top_k=2) == r.rank("red", docs)[:2]


def test_save_load_round_trip_and_transformers(trained, tmp_path):
    r = Reranker.from_pretrained(trained.output_dir)
    queries, docs = ["red", "blue things"], ["a red thing", "a very long blue thing " * 20]
    again = Reranker.from_pretrained(r.save_pretrained(tmp_path / "copy"))
    np.testing.assert_array_equal(r.score_pairs(queries, docs), again.score_pairs(queries, docs))
    assert json.loads((trained.output_dir / "reranker_config.json").read_text())["max_length"] == 32

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(trained.output_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(trained.output_dir)
    enc = tok(queries, docs, truncation=True, padding=True, return_tensors="pt")  # model_max_length: 32
    with torch.no_grad():
        theirs = hf(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose(r.score_pairs(queries, docs), theirs, atol=1e-4)

    st = pytest.importorskip("sentence_transformers")
    ce = st.CrossEncoder(str(trained.output_dir), device="cpu")
    np.testing.assert_allclose(ce.predict(list(zip(queries, docs, strict=True)), activation_fn=torch.nn.Identity()),
                               theirs, atol=1e-4)


def test_rerank_run_and_evaluation(trained, tiny_dir):
    data = toy_data()
    r, enc = Reranker.from_pretrained(trained.output_dir), Encoder.from_pretrained(tiny_dir)
    first = retrieve(enc, data, 6)
    run = rerank_run(r, data, first, top=3)
    for q in data.queries:
        assert run[q][3:] == first[q][3:] and sorted(run[q][:3]) == sorted(first[q][:3])
    result = evaluate_reranking(enc, r, data, top=6)
    assert result["top"] == 6 and result["reranked"]["ndcg@10"] == 1.0
    worst = {q: sorted(data.docs, key=lambda d, q=q: d in data.qrels[q]) for q in data.queries}  # positive last
    cosines = {q: [0.0] * 6 for q in data.queries}
    result = evaluate_reranking(enc, r, data, top=6, first_stage=(worst, cosines), fusion_weights=(1.0,))
    assert result["first_stage"]["recall@1"] == 0.0 and result["reranked"]["recall@1"] == 1.0
    assert result["fused"]["1.0"] == result["reranked"]  # all-zero first-stage scores change nothing

    # fusion: a huge weight on the first stage's scores gives back its order; weight 0 is plain re-ranking
    first, scores = retrieve_scored(enc, data, 6)
    assert rerank_run(r, data, first, 6, first_stage_scores=scores, fusion_weight=1e6) == first
    assert rerank_run(r, data, first, 6, first_stage_scores=scores, fusion_weight=0.0) == rerank_run(r, data, first, 6)
    docs = [data.docs[d] for d in first["q2"]]
    fused = r.rank("blue", docs, first_stage_scores=scores["q2"], fusion_weight=1e6)
    assert [i for i, _ in fused] == list(range(6))
    with pytest.raises(ValueError, match="fusion_weight"):
        r.rank("blue", docs, first_stage_scores=scores["q2"])  # none saved with this model, none given
    with pytest.raises(ValueError, match="first-stage scores"):
        r.rank("blue", docs, first_stage_scores=[0.0], fusion_weight=1.0)
    assert result["first_stage"]["recall@100"] == result["reranked"]["recall@100"] == 1.0


def test_bad_input_is_a_clear_error(trained):
    r = Reranker.from_pretrained(trained.output_dir)
    with pytest.raises(ValueError, match="query is empty"):
        r.rank("  ", ["a doc"])
    with pytest.raises(ValueError, match="docs is empty"):
        r.rank("red", [])
    with pytest.raises(TypeError, match="list of texts"):
        r.score("red", "a doc")
    with pytest.raises(ValueError, match="top_k"):
        r.rank("red", ["a doc"], top_k=0)
    with pytest.raises(ValueError, match="dtype"):
        Reranker.from_pretrained(trained.output_dir, dtype="fp16").score("red", ["a doc"])
    with pytest.raises(ValueError, match="unknown loss"):
        train_reranker(trained.output_dir / "x", toy_data(), loss="pairwise")


def test_bf16_scores_follow_fp32(trained):
    docs = list(toy_data().docs.values())
    fp32 = Reranker.from_pretrained(trained.output_dir).score("green", docs)
    bf16 = Reranker.from_pretrained(trained.output_dir, dtype="bf16").score("green", docs)
    assert np.abs(fp32 - bf16).max() < 0.1 * max(1.0, np.abs(fp32).max())


def test_cli_smoke(tmp_path, tiny_dir, capsys):
    data = toy_data()
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                              for q, t in data.queries.items()))
    (tmp_path / "d.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in data.docs.items()))
    (tmp_path / "r.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, rel in data.qrels.items() for d in rel))
    files = ["--queries", str(tmp_path / "q.jsonl"), "--docs", str(tmp_path / "d.tsv"),
             "--qrels", str(tmp_path / "r.tsv")]
    out = tmp_path / "out"
    args = ["train-reranker", *files, "-o", str(out), "--model", str(tiny_dir), "--retriever", str(tiny_dir),
            "--loss", "binary", "--negatives", "2", "--max-length", "32", "--epochs", "2", "--batch-size", "4",
            "--lr", "1e-3", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 4 and "dev" not in report  # 6 groups / 4 per batch = 2 steps x 2 epochs
    assert {"config.json", "model.safetensors", "reranker_config.json", "hard_negatives.json", "metrics.jsonl",
            "tokenizer.json", "results.json"} <= {p.name for p in out.iterdir()}
    assert Reranker.from_pretrained(out).rank("red", ["a red thing", "a blue thing"])[0][1] is not None
    assert main(args) == 2  # the output exists: --resume or --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train-reranker", "-o", str(tmp_path / "o2")]) == 2
    assert main(["train-reranker", *files, "-o", str(tmp_path / "o3"), "--negatives", "0"]) == 2


def test_loading_files_keeps_the_toy_consistent(tmp_path):
    # the CLI test writes the toy as files: they must read back as the same data
    data = toy_data()
    (tmp_path / "q.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in data.queries.items()))
    (tmp_path / "d.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in data.docs.items()))
    (tmp_path / "r.tsv").write_text("".join(f"{q}\t{d}\t1\n" for q, rel in data.qrels.items() for d in rel))
    back = load_retrieval_files(tmp_path / "q.tsv", tmp_path / "d.tsv", tmp_path / "r.tsv")
    assert back.queries == data.queries and back.docs == data.docs and back.qrels == data.qrels


def test_cli_reports_first_stage_and_reranked_dev_and_test(tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(retrieval_data, "bbc_retrieval", lambda split, seed: toy_data())  # the built-in path, toy-sized
    out = tmp_path / "out"
    assert main(["train-reranker", "--dataset", "bbc-news", "-o", str(out), "--model", str(tiny_dir),
                 "--retriever", str(tiny_dir), "--negatives", "2", "--max-length", "32",
                 "--epochs", "1", "--batch-size", "6", "--rerank-top", "4", "--dev-top", "3", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["dev"]) == {"top", "first_stage", "reranked", "fused", "fusion_sweep"}
    assert set(report["test"]) == {"top", "first_stage", "reranked", "fused"}
    weight = report["dev"]["fused"]["weight"]
    assert round(report["dev"]["fused"]["ndcg@10"], 4) == max(report["dev"]["fusion_sweep"].values())
    assert report["test"]["fused"]["weight"] == weight == json.loads((out / "reranker_config.json").read_text())[
        "fusion_weight"] == Reranker.from_pretrained(out).fusion_weight
    for split in ("dev", "test"):
        assert report[split]["top"] == 4
        assert report[split]["first_stage"]["recall@100"] == report[split]["reranked"]["recall@100"] == 1.0
    assert report["best_step"] == 1 == report["steps"]
    assert json.loads((out / "results.json").read_text()) == report


def test_a_model_without_pooler_gets_a_new_one(tmp_path, tiny_dir, caplog):
    import shutil

    from safetensors.torch import load_file, save_file

    base = tmp_path / "nopooler"
    shutil.copytree(tiny_dir, base)
    state = {k: v for k, v in load_file(base / "model.safetensors").items() if "pooler" not in k}
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no pooler"):
        Reranker.from_pretrained(base)
    data = toy_data()
    with caplog.at_level("INFO", logger="bertkit"):
        train_reranker(tmp_path / "out", data, model=str(base), retriever=str(tiny_dir), negatives=1, max_length=16,
                       training=TrainConfig(max_steps=1, batch_size=6, progress=False))
    assert "no pooler: a new one is initialised" in caplog.text
    assert Reranker.from_pretrained(tmp_path / "out").head.encoder.pooler is not None
