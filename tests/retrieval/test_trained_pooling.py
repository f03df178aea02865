"""The pooling and prompts a bi-encoder is trained with are what every command embeds with afterwards:
train-embeddings --pooling cls, then evaluation (during training and after), evaluate-retrieval, index
build/search, the server and sentence-transformers itself all use [CLS] and the trained prompts."""

import json

import numpy as np
import pytest

import bertkit
from bertkit.cli.main import main
from bertkit.retrieval.biencoder import train_embeddings
from bertkit.retrieval.data import load_retrieval_files
from bertkit.retrieval.index import VectorIndex
from bertkit.retrieval.search import embed_side, evaluate_retrieval
from bertkit.train.engine import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "red green blue cat dog bird river stone cloud music paper light garden train winter apple".split()


def write_data(d, n=24):
    """n queries, each relevant to one document sharing two of its words."""
    rng = np.random.default_rng(0)
    queries, docs = [], []
    for i in range(n):
        a, b, c, e = rng.choice(WORDS, 4, replace=False)
        queries.append({"_id": f"q{i}", "text": f"{a} {b}"})
        docs.append({"_id": f"d{i}", "text": f"a {a} and a {b} near the {c} {e}"})
    (d / "q.jsonl").write_text("".join(json.dumps(x) + "\n" for x in queries))
    (d / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    (d / "r.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(n)))
    return [str(d / f) for f in ("q.jsonl", "d.jsonl", "r.tsv")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """train-embeddings --pooling cls with query/document prompts, a few steps, through the CLI."""
    d = tmp_path_factory.mktemp("cls_run")
    files = write_data(d)
    out = d / "model"
    assert main(["train-embeddings", "--model", str(tiny_dir), "--queries", files[0], "--docs", files[1],
                 "--qrels", files[2], "--output", str(out), "--pooling", "cls", "--query-prompt", "query: ",
                 "--doc-prompt", "passage: ", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
                 "--max-length", "32", "--no-progress"]) == 0
    return out, files, load_retrieval_files(*files)


def test_saved_settings_and_sentence_transformers_agree(trained):
    from sentence_transformers import SentenceTransformer

    out, _, data = trained
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == "query: " and prompts["document"] == "passage: "
    enc = bertkit.load(str(out))
    assert enc.sentence.modes == ("cls",)
    queries, docs = list(data.queries.values()), list(data.docs.values())
    st_model = SentenceTransformer(str(out), device="cpu")
    assert np.abs(st_model.encode_query(queries) - enc.embed(queries, prompt_name="query")).max() <= 1e-5
    assert np.abs(st_model.encode_document(docs) - enc.embed(docs, prompt_name="document")).max() <= 1e-5
    cls = enc.embed(queries, pooling="cls", prompt="query: ")
    assert np.abs(embed_side(enc, queries, "query") - cls).max() <= 1e-6  # retrieval: cls, with the query prompt
    assert np.abs(enc.embed(queries, pooling="mean", prompt="query: ") - cls).max() > 1e-3  # mean would differ


def test_evaluate_retrieval_cli_embeds_with_cls(trained, capsys):
    out, files, data = trained
    enc = bertkit.load(str(out))
    want = evaluate_retrieval(enc, data, pooling="cls", query_prompt="query: ", doc_prompt="passage: ")
    assert main(["evaluate-retrieval", str(out), "--queries", files[0], "--docs", files[1], "--qrels", files[2],
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert all(got[k] == pytest.approx(v) for k, v in want.items())
    mean = evaluate_retrieval(enc, data, pooling="mean", query_prompt="", doc_prompt="")
    assert mean != want  # what the bug measured: another model
    assert main(["evaluate-retrieval", str(out), "--queries", files[0], "--docs", files[1], "--qrels", files[2],
                 "--json", "--pooling", "mean", "--query-prompt", "", "--doc-prompt", ""]) == 0
    overridden = json.loads(capsys.readouterr().out)
    assert all(overridden[k] == pytest.approx(v) for k, v in mean.items())


def test_index_build_and_search_embed_with_cls(trained, tmp_path, capsys):
    out, files, data = trained
    idx = tmp_path / "idx"
    assert main(["index", "build", str(out), "--input", files[1], "--output", str(idx)]) == 0
    index = VectorIndex.load(idx)
    assert index.model["pooling"] == ["cls"]
    assert index.model["document_prompt"] == "passage: " and index.model["query_prompt"] == "query: "
    enc = bertkit.load(str(out))
    docs = [data.docs[i] for i in index.ids]
    assert np.abs(index.vectors - enc.embed(docs, pooling="cls", normalize=True, prompt="passage: ")).max() <= 1e-5
    capsys.readouterr()
    assert main(["index", "search", str(idx), "red green", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    q = enc.embed(["red green"], pooling="cls", prompt="query: ")[0]
    for h in hits:
        assert h["score"] == pytest.approx(float(index.vectors[index.ids.index(h["id"])] @ q), abs=1e-5)
    assert main(["index", "search", str(idx), "red green", "--query-prompt-name", "nope"]) == 2
    assert "unknown prompt_name 'nope'" in capsys.readouterr().err


def test_server_embeds_with_cls_and_takes_a_prompt_name(trained):
    from fastapi.testclient import TestClient

    from bertkit.serve import create_app, load_service

    out, _, _ = trained
    enc = bertkit.load(str(out))
    texts = ["red green", "a much longer text about a stone in the river"]
    with TestClient(create_app(load_service(str(out)))) as client:
        r = client.post("/v1/embeddings", json={"input": texts})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        assert np.abs(got - enc.embed(texts, pooling="cls", normalize=True)).max() <= 1e-5
        r = client.post("/v1/embeddings", json={"input": texts, "prompt_name": "query"})
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        assert np.abs(got - enc.embed(texts, pooling="cls", prompt="query: ")).max() <= 1e-5
        n_tokens = sum(len(ids) for ids in enc.tokenize(["query: " + t for t in texts]).ids)
        assert r.json()["usage"]["prompt_tokens"] == n_tokens  # the prompt's tokens count
        r = client.post("/v1/embeddings", json={"input": texts, "prompt_name": "nope"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "prompt_name"
        assert "'query': 'query: '" in r.json()["error"]["message"]


def test_best_checkpoint_is_chosen_with_the_trained_pooling(tmp_path, tiny_dir):
    """Dev evaluation during training embeds as the saved model does: its recorded score is the saved
    model's own score (with mean pooling and no prompts the same model scores differently)."""
    data = load_retrieval_files(*write_data(tmp_path))
    out = tmp_path / "model"
    result = train_embeddings(out, data, data, model=str(tiny_dir), pooling="cls", query_prompt="query: ",
                              doc_prompt="passage: ", max_length=32,
                              training=TrainConfig(max_steps=3, batch_size=8, lr=1e-3, eval_every=1, progress=False))
    saved = evaluate_retrieval(bertkit.load(str(out)), data)
    assert result.dev is not None and result.dev["ndcg@10"] == pytest.approx(saved["ndcg@10"], abs=1e-9)
    assert evaluate_retrieval(bertkit.load(str(out)), data, pooling="mean", query_prompt="", doc_prompt="") != saved


def test_training_a_sentence_transformers_model_trains_its_dense_module(tmp_path, tiny_dir):
    """From a model with Dense + Normalize, include_prompt=False and its own prompts: the Dense module trains,
    the prompts are kept, and sentence-transformers embeds the result as bertkit does."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    start = SentenceTransformer(modules=[models.Transformer(str(tiny_dir), max_seq_length=32),
                                         models.Pooling(32, pooling_mode="weightedmean", include_prompt=False),
                                         models.Dense(32, 16, activation_function=torch.nn.Tanh()),
                                         models.Normalize()],
                                prompts={"query": "search query: ", "document": "search document: "}, device="cpu")
    start.save(str(tmp_path / "start"))
    before = start[2].linear.weight.detach().clone()
    data = load_retrieval_files(*write_data(tmp_path))
    out = tmp_path / "model"
    train_embeddings(out, data, None, model=str(tmp_path / "start"),
                     training=TrainConfig(max_steps=2, batch_size=8, lr=1e-2, progress=False))
    enc = bertkit.load(str(out))
    s = enc.sentence
    assert s.modes == ("weightedmean",) and not s.pooling.include_prompt and s.normalize and len(s.dense) == 1
    assert s.prompts["query"] == "search query: " and s.prompts["document"] == "search document: "
    assert (s.dense[0].linear.weight.detach() - before).abs().max() > 1e-4  # it trained
    back = SentenceTransformer(str(out), device="cpu")
    queries = list(data.queries.values())
    assert np.abs(back.encode_query(queries) - enc.embed(queries, prompt_name="query")).max() <= 1e-5
