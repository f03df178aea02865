"""Raw-text NER: entities with character offsets equal to transformers' token-classification pipeline, for
every aggregation strategy, on a WordPiece tokenizer (MiniLM's real vocabulary, and a family one) and a byte-level
BPE one (RoBERTa), on the same saved model."""

from __future__ import annotations

import warnings

import pytest
import torch

from bertkit.data.tag_schemes import from_spans
from bertkit.inference.token_aggregation import STRATEGIES, TokenAggregator
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import task_model
from tests.conftest import copy_tokenizer

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# punctuation, runs of spaces, sub-words, out-of-vocabulary characters ([UNK]), accents, an empty-ish text
TEXTS = ["John  Smith lives in New-York, doesn't he?", "Überraschung!!  unbelievably   tokenization-heavy text.",
         "a", "The parser returns a value when the function raises an error.", "snow \u2603\u2603 and \U0001F600 ok",
         "   leading and trailing spaces   "]


def minilm_ner(directory, minilm_dir):
    """A tiny random BertForTokenClassification saved by transformers, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, id2label=dict(enumerate(LABELS)),
                     label2id={n: i for i, n in enumerate(LABELS)})
    model = BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)  # confident, varied tags: entities of several tokens
    model.save_pretrained(directory)
    copy_tokenizer(minilm_dir, directory)
    return directory


@pytest.fixture(scope="module", params=["minilm", "bert", "roberta"])
def ner_dir(request, tmp_path_factory, minilm_dir):
    d = tmp_path_factory.mktemp(f"ner_{request.param}")
    if request.param == "minilm":
        return minilm_ner(d, minilm_dir)
    task_model(request.param, d, task="ner", labels=LABELS)
    return d


def same(ref: list[dict], ours: list[dict]) -> None:
    assert [{k: v for k, v in r.items() if k != "score"} for r in ref] == \
        [{k: v for k, v in o.items() if k != "score"} for o in ours]
    assert [float(r["score"]) for r in ref] == pytest.approx([o["score"] for o in ours], abs=2e-6)


def test_every_strategy_matches_the_pipeline(ner_dir):
    from transformers import pipeline

    tm = TaskModel.from_pretrained(ner_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline("token-classification", model=str(ner_dir))
        counts = {}
        for strategy in STRATEGIES:
            ref = pipe(TEXTS, aggregation_strategy=strategy)
            ours = tm.predict(TEXTS, aggregation_strategy=strategy)
            assert [o["text"] for o in ours] == TEXTS
            for r, o in zip(ref, ours, strict=True):
                same(r, o["entities"])
            counts[strategy] = sum(len(r) for r in ref)
    # the texts give entities of several tokens, and word aggregation changes them: the comparison has teeth
    assert counts["none"] > counts["simple"] > 0 and counts["first"] > 0
    for o in tm.predict(TEXTS, aggregation_strategy="simple"):
        for e in o["entities"]:
            assert set(e) == {"entity_group", "score", "word", "start", "end"} and 0 < e["score"] <= 1
            assert 0 <= e["start"] <= e["end"] <= len(o["text"])  # byte-level BPE: a lone space is (i, i)


def test_word_lists_keep_word_level_output(ner_dir):
    tm = TaskModel.from_pretrained(ner_dir)
    out = tm.predict([["John", "lives", "in", "Paris"]])[0]
    assert set(out) == {"words", "tags", "entities"} and len(out["tags"]) == 4
    with pytest.raises(TypeError, match=r"texts\[0\] is list: aggregation_strategy takes raw strings"):
        tm.predict([["John"]], aggregation_strategy="simple")
    with pytest.raises(ValueError, match="unknown aggregation_strategy 'best'; expected one of none, simple"):
        tm.predict(["John"], aggregation_strategy="best")


def test_bioes_groups_by_the_scheme(minilm_dir):
    """BIOES predictions group at S-/E- boundaries (the pipeline would merge B-X E-X S-X into one group)."""
    from bertkit.data.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(minilm_dir)
    text = "ann bob cid dan"
    batch = tok.encode_offsets([text])
    tags = ["O", *from_spans([("PER", 0, 2), ("PER", 2, 3), ("LOC", 3, 4)], 4, "bioes"), "O"]
    labels = ["O", "B-PER", "E-PER", "S-PER", "S-LOC"]
    assert len(batch.ids[0]) == len(tags)  # one token per word here
    logits = torch.full((len(tags), len(labels)), -5.0)
    for i, t in enumerate(tags):
        logits[i, labels.index(t)] = 5.0
    agg = TokenAggregator(tok, labels, "bioes")
    got = agg.entities(text, batch.ids[0], batch.offsets[0], batch.special_mask[0], logits.numpy())
    assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in got] == \
        [("PER", 0, 7, "ann bob"), ("PER", 8, 11, "cid"), ("LOC", 12, 15, "dan")]
