"""The finetune API on a tiny random BERT: every task trains from small files and writes a directory that
load_task_model (and transformers) reads back; bad input fails early and clearly."""

import json
import math
import random

import numpy as np
import pytest
import torch

from bertkit.errors import BertkitError, CheckpointError, InputFileError
from bertkit.model.attention import Packing
from bertkit.task_model import load_task_model
from bertkit.train.finetune import finetune
from tests.conftest import save_tiny_hf_model

WORDS = "good great love best music film game war death king river water night school city team".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(minilm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_tiny_hf_model(d, minilm_dir, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return d


def sentence(rnd, k=None):
    return " ".join(rnd.choices(WORDS, k=k or rnd.randint(2, 6)))


def write_task_file(path, task, n, seed=0, labels=("pos", "neg", "mid")):
    """A small labelled file for `task` in the format its suffix names."""
    rnd = random.Random(seed)
    if task == "ner":
        blocks = []
        for _ in range(n):
            words = sentence(rnd).split()
            tags = ["O"] * len(words)
            i = rnd.randrange(len(words))
            tags[i] = rnd.choice(["B-PER", "B-LOC"])
            if i + 1 < len(words) and tags[i] == "B-PER":
                tags[i + 1] = "I-PER"
            blocks.append("\n".join(f"{w} {t}" for w, t in zip(words, tags, strict=True)))
        path.write_text("\n\n".join(blocks) + "\n")
    elif task == "pair-classification":
        rows = [json.dumps({"text": sentence(rnd), "text_pair": sentence(rnd), "label": rnd.choice(["same", "diff"])})
                for _ in range(n)]
        path.write_text("\n".join(rows) + "\n")
    elif task == "multilabel":
        rows = [f"{sentence(rnd)},{'|'.join(rnd.sample(['a', 'b', 'c'], rnd.randint(0, 2)))}" for _ in range(n)]
        path.write_text("text,label\n" + "\n".join(rows) + "\n")
    elif task == "regression":
        rows = [f"{sentence(rnd)},{rnd.uniform(0, 5):.3f}" for _ in range(n)]
        path.write_text("text,label\n" + "\n".join(rows) + "\n")
    else:
        rows = [f"{sentence(rnd)},{labels[i % len(labels)]}" for i in range(n)]
        path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


SUFFIX = {"classification": ".csv", "pair-classification": ".jsonl", "multilabel": ".csv", "regression": ".csv",
          "ner": ".conll"}


def data_files(tmp_path, task, n_train=12, n_dev=6):
    train = write_task_file(tmp_path / f"train{SUFFIX[task]}", task, n_train, seed=0)
    dev = write_task_file(tmp_path / f"dev{SUFFIX[task]}", task, n_dev, seed=1)
    return train, dev


def run(out, tiny, task, train, dev, **settings):
    kw = dict(task=task, model=str(tiny), train_file=str(train), eval_file=str(dev), epochs=1, batch_size=4,
              lr=1e-3, max_length=32, progress=False, seed=0)
    return finetune(out, **{**kw, **settings})


@pytest.mark.parametrize("task", ["classification", "pair-classification", "multilabel", "regression", "ner"])
def test_each_task_trains_saves_and_predicts(tmp_path, tiny, task):
    """A few steps of each task; the written directory loads with load_task_model, its dev metrics are the
    best eval's, and predict() gives well-formed output."""
    train, dev = data_files(tmp_path, task)
    out = tmp_path / "out"
    result = run(out, tiny, task, train, dev)
    assert result.state.step == 3 and result.state.stopped == "done"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "bertkit_task.json", "metrics.jsonl",
                 "training_curve.png", "finetune_config.json", "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == task and results["steps"] == 3 and results["dev"] == result.dev

    model = load_task_model(out)
    assert model.task == task
    expected_labels = {"classification": ["mid", "neg", "pos"], "pair-classification": ["diff", "same"],
                       "multilabel": ["a", "b", "c"], "regression": [],
                       "ner": ["O", "B-LOC", "B-PER", "I-PER"]}[task]
    assert model.labels == expected_labels
    # the saved model is the one whose eval was best: re-evaluating it gives the recorded best value
    metric = {"classification": "accuracy", "pair-classification": "accuracy", "multilabel": "micro_f1",
              "regression": "pearson", "ner": "f1"}[task]
    # (multilabel: checkpoints are picked with the fixed 0.5; the model then predicts with thresholds tuned on dev)
    picked_with = results["thresholds"]["dev"]["fixed"] if task == "multilabel" else result.dev
    assert result.state.best == pytest.approx(picked_with[metric], abs=1e-6, nan_ok=True)
    with open(out / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    assert evals[-1]["step"] == 3 and metric in evals[-1]

    texts = ["good music film", "war and death in the city"]
    if task == "ner":
        preds = model.predict([t.split() for t in texts])
        assert [p["words"] for p in preds] == [t.split() for t in texts]
        assert all(len(p["tags"]) == len(p["words"]) and set(p["tags"]) <= set(expected_labels) for p in preds)
    elif task == "pair-classification":
        preds = model.predict(texts, pairs=["river water", "king"])
        assert all(p["label"] in expected_labels and sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
                   for p in preds)
        with pytest.raises(ValueError, match="pairs"):
            model.predict(texts)
    elif task == "multilabel":
        preds = model.predict(texts)
        for p in preds:
            assert set(p["probabilities"]) == set(expected_labels)
            assert p["labels"] == [n for n in expected_labels if p["probabilities"][n] >= model.thresholds[n]]
    elif task == "regression":
        preds = model.predict(texts)
        assert all(set(p) == {"score"} and math.isfinite(p["score"]) for p in preds)
    else:
        preds = model.predict(texts)
        for p in preds:
            assert list(p["probabilities"]) == expected_labels
            assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
            assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert len(preds) == len(texts)


def bertkit_logits(model, ids):
    """Logits of our head on the packed ids of several sequences."""
    packing = Packing.from_lengths([len(x) for x in ids])
    flat = torch.tensor([t for x in ids for t in x])
    with torch.no_grad():
        return model.head.eval()(flat, packing, torch.zeros_like(flat))


def test_classification_dir_loads_in_transformers_with_same_logits(tmp_path, tiny):
    """BertForSequenceClassification reads the saved directory (labels included) and gives our logits."""
    transformers = pytest.importorskip("transformers")
    train, dev = data_files(tmp_path, "classification")
    run(tmp_path / "out", tiny, "classification", train, dev)
    model = load_task_model(tmp_path / "out")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.id2label == {0: "mid", 1: "neg", 2: "pos"}
    texts = ["good music film", "war and death in the city tonight", "king"]
    ids = model.tokenizer.encode(texts).ids
    ours = bertkit_logits(model, ids)
    with torch.no_grad():
        ref = torch.cat([hf(input_ids=torch.tensor([x])).logits for x in ids])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    probs = [p["probabilities"] for p in model.predict(texts)]
    np.testing.assert_allclose([list(p.values()) for p in probs], ref.softmax(-1).numpy(), atol=1e-5)


def test_ner_dir_loads_in_transformers_and_tags_map_to_words(tmp_path, tiny):
    """BertForTokenClassification gives our token logits; predict() tags each word with the label of its first
    sub-word, one tag per word, "O" for words cut off by max_length."""
    transformers = pytest.importorskip("transformers")
    train, dev = data_files(tmp_path, "ner")
    run(tmp_path / "out", tiny, "ner", train, dev, max_length=12)
    model = load_task_model(tmp_path / "out")
    hf = transformers.BertForTokenClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.id2label == dict(enumerate(model.labels))
    sentences = [["kingsriver", "music", "waterfilms"], ["good"] * 15]  # sub-word splits; then truncation
    batch, word_ids = model.tokenizer.encode_words(sentences, model.max_length)
    assert len(batch.ids[0]) > 5 and len(batch.ids[1]) == 12
    ours = bertkit_logits(model, batch.ids)
    with torch.no_grad():
        ref = [hf(input_ids=torch.tensor([x])).logits[0] for x in batch.ids]
    torch.testing.assert_close(ours, torch.cat(ref), rtol=0, atol=1e-4)

    preds = model.predict(sentences)
    for p, words, wids, logits in zip(preds, sentences, word_ids, ref, strict=True):
        assert p["words"] == words and len(p["tags"]) == len(words)
        first = {}
        for t, w in enumerate(wids):
            if w is not None and w not in first:
                first[w] = model.labels[int(logits[t].argmax())]
        assert p["tags"] == [first.get(w, "O") for w in range(len(words))]
    assert len(set(word_ids[1]) - {None}) == 10  # 15 words, 10 fit: the rest were tagged "O" above
    # a string is split on whitespace
    assert model.predict(["good music film"])[0]["words"] == ["good", "music", "film"]


def test_ner_with_truncated_and_token_less_sentences(tmp_path, tiny):
    """NER trains on a sentence with no labelled token (a word that tokenizes to nothing, alone in its batch)
    and evaluates sentences longer than max_length: the cut-off words count as "O" predictions."""
    long_sentence = "".join("good O\n" for _ in range(15)) + "river B-LOC\n"
    (tmp_path / "train.conll").write_text("good O\ncity B-LOC\n\n\u200b O\n\n" + long_sentence)
    (tmp_path / "dev.conll").write_text(long_sentence + "\nking B-LOC\n")
    result = run(tmp_path / "out", tiny, "ner", tmp_path / "train.conll", tmp_path / "dev.conll", batch_size=1,
                 max_length=12)
    assert result.state.step == 3
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        assert all(math.isfinite(r["loss"]) for r in map(json.loads, f))
    dev = result.dev
    assert dev is not None and 0 <= dev["f1"] <= 1
    # 17 gold tags; the truncated "river" (B-LOC) can only be predicted "O", so it is never a true positive
    assert dev["recall"] <= 0.5
    preds = result.model.predict([["good"] * 15 + ["river"], ["\u200b"]])
    assert [len(p["tags"]) for p in preds] == [16, 1] and preds[0]["tags"][-1] == "O" and preds[1]["tags"] == ["O"]


def test_non_empty_output_needs_resume_or_overwrite(tmp_path, tiny):
    train, dev = data_files(tmp_path, "classification")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BertkitError, match="not empty"):
        run(out, tiny, "classification", train, dev)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_starts_over_and_keeps_foreign_files(tmp_path, tiny):
    """overwrite=True removes the previous run's checkpoints and metrics, not the user's own files."""
    train, dev = data_files(tmp_path, "classification")
    out = tmp_path / "out"
    run(out, tiny, "classification", train, dev, epochs=2, checkpoint_every=1, keep_checkpoints=5)
    assert (out / "checkpoints" / "step-0000006.pt").is_file()
    (out / "notes.txt").write_text("mine")
    result = run(out, tiny, "classification", train, dev, epochs=1, overwrite=True)
    assert result.state.step == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003.pt"]
    with open(out / "metrics.jsonl") as f:
        assert max(r["step"] for r in map(json.loads, f)) == 3
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["steps"] == 3


@pytest.mark.parametrize("content", ["text,label\n", "text,label\n,pos\nsome text,\n"])
def test_empty_training_file_fails_before_output_exists(tmp_path, tiny, content):
    _, dev = data_files(tmp_path, "classification")
    (tmp_path / "empty.csv").write_text(content)
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=r"empty\.csv.*no usable examples"):
        run(out, tiny, "classification", tmp_path / "empty.csv", dev)
    assert not out.exists()


def test_unseen_eval_label_is_named(tmp_path, tiny):
    """A dev label the training file never has fails before anything is written, naming label and line."""
    train, _ = data_files(tmp_path, "classification")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\ngood film,pos\nbad film,awful\n")
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=r"dev.csv.*'awful' \(first at line 3\)"):
        run(out, tiny, "classification", train, dev)
    assert not out.exists()


def test_unseen_ner_tag_is_named(tmp_path, tiny):
    train, _ = data_files(tmp_path, "ner")
    dev = tmp_path / "dev.conll"
    dev.write_text("good O\nking B-ORG\n")
    with pytest.raises(InputFileError, match="B-ORG"):
        run(tmp_path / "out", tiny, "ner", train, dev)


def test_resume_with_another_model_size_names_the_difference(tmp_path, tiny, minilm_dir):
    """--resume against a model of another size is refused with a CheckpointError naming hidden_size."""
    train, dev = data_files(tmp_path, "classification")
    out = tmp_path / "out"
    run(out, tiny, "classification", train, dev)
    bigger = tmp_path / "bigger"
    save_tiny_hf_model(bigger, minilm_dir, hidden_size=48)
    with pytest.raises(CheckpointError, match=r"step-0000003\.pt.*hidden_size: checkpoint 32, now 48"):
        run(out, bigger, "classification", train, dev, resume=True)


def test_resume_after_finish_changes_nothing(tmp_path, tiny):
    """Resuming a finished run trains no further step and keeps its metrics."""
    train, dev = data_files(tmp_path, "classification")
    out = tmp_path / "out"
    first = run(out, tiny, "classification", train, dev)
    before = (out / "metrics.jsonl").read_text()
    again = run(out, tiny, "classification", train, dev, resume=True)
    assert again.state.step == first.state.step == 3
    assert (out / "metrics.jsonl").read_text() == before
    assert again.dev.pop("per_label") == first.dev.pop("per_label")
    assert again.dev == pytest.approx(first.dev)


def test_named_metric_picks_the_best_and_config_is_not_changed(tmp_path, tiny):
    """--metric loss keeps the lowest-loss eval (lower is better for losses); the caller's config stays as given."""
    from bertkit.train.finetune import FinetuneConfig

    train, dev = data_files(tmp_path, "classification")
    cfg = FinetuneConfig.from_dict(dict(task="classification", model=str(tiny), train_file=str(train),
                                        eval_file=str(dev), max_steps=4, eval_every=1, batch_size=4, lr=1e-3,
                                        progress=False, metric="loss"))
    result = finetune(tmp_path / "out", cfg)
    assert cfg.training.metric == "loss" and cfg.training.greater_is_better is None
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["kind"] == "eval"]
    assert result.state.best == pytest.approx(min(losses))
    assert result.state.best_step == 1 + losses.index(min(losses))


def test_stability_options_reinit_and_freeze(tmp_path, tiny):
    """re-init touches only the top k layers (and the pooler); frozen parts are unchanged by training while
    the rest moves; a k larger than the model is refused."""
    from bertkit.model.weights import load_pretrained
    from bertkit.train.finetune import FinetuneConfig, apply_stability_options

    enc, _ = load_pretrained(tiny)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    torch.manual_seed(1)
    apply_stability_options(enc, FinetuneConfig(reinit_layers=1))
    after = enc.state_dict()
    assert not torch.equal(after["layers.1.Wqkv.weight"], before["layers.1.Wqkv.weight"])
    assert not torch.equal(after["pooler.dense.weight"], before["pooler.dense.weight"])
    assert torch.equal(after["layers.0.Wqkv.weight"], before["layers.0.Wqkv.weight"])
    assert torch.equal(after["embeddings.word.weight"], before["embeddings.word.weight"])
    with pytest.raises(ValueError, match="freeze_layers=3: the model has 2 layers"):
        apply_stability_options(enc, FinetuneConfig(freeze_layers=3))

    train, dev = data_files(tmp_path, "classification")
    run(tmp_path / "out", tiny, "classification", train, dev, freeze_embeddings=True, freeze_layers=1)
    trained, _ = load_pretrained(tmp_path / "out")
    new = trained.state_dict()
    for k in ("embeddings.word.weight", "embeddings.norm.weight", "layers.0.Wqkv.weight", "layers.0.mlp_out.bias"):
        assert torch.equal(new[k], before[k]), k
    assert not torch.equal(new["layers.1.Wqkv.weight"], before["layers.1.Wqkv.weight"])
