"""Extractive QA: head save -> transformers' XxxForQuestionAnswering with the same logits, decoding against
transformers' question-answering pipeline logic (tests/qa_reference.py), the SQuAD metric against the official
script, reading SQuAD files and every bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bertkit
from bertkit import metrics as M
from bertkit.data.qa_features import answer_positions, qa_features
from bertkit.data.squad import qa_data, read_squad
from bertkit.data.tokenizer import Tokenizer
from bertkit.data.windows import window_spans
from bertkit.errors import InputFileError
from bertkit.inference.qa_decode import best_spans
from bertkit.model.attention import Packing
from bertkit.model.directory import load_encoder
from bertkit.model.heads import QuestionAnsweringHead
from bertkit.qa_model import QAModel
from tests.compress.family_dirs import checkpoint
from tests.qa_reference import official_scores, pipeline_answers

transformers = pytest.importorskip("transformers")

CONTEXT = ("The Bank of England raised interest rates to 5.25% on Thursday, the fourteenth rise in a row. "
           "Governor Andrew Bailey said inflation was still far too high, and that the committee would act again if "
           "prices kept rising. Shares in London fell 1.2% after the decision, while the pound gained against the "
           "dollar. Economists at Barclays expect one more rise before the end of the year.")
QUESTIONS = ["Who is the governor?", "What did shares in London do?", "Where do the economists work?",
             "What rate did the bank set?"]


def qa_model_dir(variant: str, directory: Path, seed: int = 0) -> Path:
    """A tiny model of the variant with a QA head whose weights are large enough that spans differ clearly,
    saved by bertkit."""
    checkpoint(variant, directory)
    encoder, _, _ = load_encoder(directory)
    torch.manual_seed(seed)
    head = QuestionAnsweringHead(encoder).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("encoder.") and p.dim() == 2:
                torch.nn.init.normal_(p, std=0.5)
    QAModel(head, Tokenizer.from_dir(directory), max_length=64, doc_stride=16).save_pretrained(directory)
    return directory


# ---- head layout -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["bert", "roberta", "deberta-v3", "modernbert", "electra", "distilbert",
                                     "mpnet"])
def test_head_saved_loads_in_transformers_with_the_same_logits(variant, tmp_path, one_thread):
    d = qa_model_dir(variant, tmp_path / variant)
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"][0].endswith("ForQuestionAnswering")
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(d, attn_implementation="eager").eval()
    ours = bertkit.load_task_model(d)
    assert isinstance(ours, QAModel)
    g = torch.Generator().manual_seed(1)
    lengths = [7, 12, 3]
    ids = [torch.randint(5, 900, (n,), generator=g) for n in lengths]
    with torch.inference_mode():
        packed = ours.model(torch.cat(ids), Packing.from_lengths(lengths))
        for i, (x, got) in enumerate(zip(ids, packed.split(lengths), strict=True)):
            ref = hf(input_ids=x[None])
            torch.testing.assert_close(got[:, 0], ref.start_logits[0], atol=2e-5, rtol=1e-4, msg=f"seq {i} start")
            torch.testing.assert_close(got[:, 1], ref.end_logits[0], atol=2e-5, rtol=1e-4, msg=f"seq {i} end")


@pytest.mark.parametrize("variant", ["bert", "modernbert", "distilbert"])
def test_transformers_qa_directory_loads_with_the_same_logits(variant, tmp_path, one_thread):
    d = checkpoint(variant, tmp_path / "hf", role="qa")  # written by transformers' XxxForQuestionAnswering
    assert bertkit.inspect(d).role == "qa"
    model = bertkit.load_task_model(d)
    assert isinstance(model, QAModel)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(d, attn_implementation="eager").eval()
    x = torch.randint(5, 900, (11,), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got = model.model(x, Packing.from_lengths([11]))
        ref = hf(input_ids=x[None])
    torch.testing.assert_close(got[:, 0], ref.start_logits[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[:, 1], ref.end_logits[0], atol=2e-5, rtol=1e-4)


def test_qa_loss_is_transformers_loss(tmp_path, one_thread):
    d = qa_model_dir("bert", tmp_path / "m")
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(d, attn_implementation="eager").eval()
    ours = bertkit.load_task_model(d)
    lengths, labels = [9, 6], torch.tensor([[3, 5], [0, 0]])
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(5, 900, (n,), generator=g) for n in lengths]
    with torch.inference_mode():
        packing = Packing.from_lengths(lengths)
        loss = ours.model.loss(ours.model(torch.cat(ids), packing), labels, packing)
        ref = [hf(input_ids=x[None], start_positions=labels[i:i + 1, 0], end_positions=labels[i:i + 1, 1]).loss
               for i, x in enumerate(ids)]
    # transformers averages within a batch; one sequence per call, so the mean of the two calls
    torch.testing.assert_close(loss, torch.stack(ref).mean(), atol=1e-5, rtol=1e-5)


# ---- decoding vs the pipeline ---------------------------------------------------------------------------------
def assert_same_answers(ours, ref):
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == [(a["answer"], a["start"], a["end"]) for a in ref]
    np.testing.assert_allclose([a["score"] for a in ours], [a["score"] for a in ref], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variant", ["bert", "roberta", "deberta-v3", "modernbert"])
def test_decoding_matches_the_pipeline_over_several_windows(variant, tmp_path, one_thread):
    d = qa_model_dir(variant, tmp_path / variant)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(d, attn_implementation="eager").eval()
    model = bertkit.load_task_model(d)
    for top_k, impossible in ((1, False), (3, True)):
        got = model.predict(QUESTIONS, [CONTEXT] * len(QUESTIONS), top_k=top_k,
                            null_threshold=0.0 if impossible else None)
        for q, ours in zip(QUESTIONS, got, strict=True):
            ref, n_windows = pipeline_answers(hf, tok, q, CONTEXT, top_k=top_k, max_seq_len=64, doc_stride=16,
                                              handle_impossible_answer=impossible)
            assert n_windows >= 3  # the context runs over several windows
            assert_same_answers(ours if top_k > 1 else [ours], ref)


def test_decoding_matches_the_pipeline_on_minilm(minilm_dir, tmp_path, one_thread):
    """Real weights and tokenizer (WordPiece, words split on punctuation: answers are aligned to words)."""
    encoder, _, _ = load_encoder(minilm_dir)
    torch.manual_seed(0)
    head = QuestionAnsweringHead(encoder).eval()
    QAModel(head, Tokenizer.from_dir(minilm_dir), max_length=40, doc_stride=12).save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager").eval()
    model = bertkit.load_task_model(tmp_path)
    got = model.predict(QUESTIONS, [CONTEXT] * len(QUESTIONS), top_k=5)
    for q, ours in zip(QUESTIONS, got, strict=True):
        ref, n_windows = pipeline_answers(hf, tok, q, CONTEXT, top_k=5, max_seq_len=40, doc_stride=12)
        assert n_windows >= 4
        assert_same_answers(ours, ref)


@given(st.integers(1, 40), st.integers(1, 20), st.integers(1, 5), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_best_spans_are_transformers_decode_spans(n, max_len, top_k, seed):
    from transformers.pipelines.document_question_answering import decode_spans

    rng = np.random.default_rng(seed)
    start, end = rng.dirichlet(np.ones(n)).astype(np.float32), rng.dirichlet(np.ones(n)).astype(np.float32)
    ours = best_spans(start, end, top_k, max_len)
    s, e, scores = decode_spans(start, end, top_k, max_len, np.ones(n, dtype=np.int64))
    valid = [(int(a), int(b), float(c)) for a, b, c in zip(s, e, scores, strict=True) if b >= a and b - a < max_len]
    assert [x[2] for x in ours] == pytest.approx([x[2] for x in valid])
    if top_k == 1:
        assert [x[:2] for x in ours] == [x[:2] for x in valid]


def test_windows_are_the_tokenizers_overflowing_windows(minilm_dir):
    tok = Tokenizer.from_dir(minilm_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    for max_length, stride in ((48, 12), (40, 0), (64, 30)):
        feats = qa_features(qa_data([QUESTIONS[0]], [CONTEXT]).examples, tok, max_length, stride)
        ref = hf_tok(QUESTIONS[0], CONTEXT, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True)
        assert feats.features.ids == ref["input_ids"]
        assert feats.features.type_ids == ref["token_type_ids"]


def test_window_spans_cut_last_window_as_tokenizers_do():
    assert window_spans(10, 4, 1, align_last=False) == [(0, 4), (3, 7), (6, 10)]
    assert window_spans(11, 4, 1, align_last=False) == [(0, 4), (3, 7), (6, 10), (9, 11)]
    assert window_spans(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (7, 11)]  # the default: last window ends at n


def test_answer_positions_are_run_qa_labels():
    offsets = np.array([[0, 3], [4, 9], [9, 12], [13, 20]])  # "The quick est brownie"
    assert answer_positions(offsets, 4, 12) == (1, 2)
    assert answer_positions(offsets, 5, 10) == (1, 2)  # inside tokens: the tokens that hold it
    assert answer_positions(offsets, 13, 25) is None  # runs past the window


def test_training_labels_point_at_the_answer_or_cls(minilm_dir):
    tok = Tokenizer.from_dir(minilm_dir)
    answer = "Andrew Bailey"
    ex = qa_data([QUESTIONS[0]], [CONTEXT]).examples[0]
    ex.answers, ex.answer_starts = [answer], [CONTEXT.index(answer)]
    feats = qa_features([ex], tok, 48, 12, with_labels=True)
    found = 0
    for ids, (s, e) in zip(feats.features.ids, feats.features.labels, strict=True):
        if (s, e) == (0, 0):
            continue
        found += 1
        assert tok.decode(ids[s:e + 1]) == answer.lower()
    assert found >= 1 and any(lab == [0, 0] for lab in feats.features.labels)


# ---- metric --------------------------------------------------------------------------------------------------
def test_squad_metric_matches_the_official_script():
    golds = [["The Bank of England"], ["5.25%", "5.25 %"], ["Andrew Bailey", "Bailey"], [""], [],
             ["an apple a day"], ["Barclays"], ["fell 1.2%"]]
    preds = ["bank of england!", "5.25", "Governor Andrew Bailey", "", "something", "apple day", "", "1.2% fell"]
    ours = M.squad_scores(golds, preds)
    ref = official_scores(golds, preds)
    assert ours == pytest.approx(ref)
    assert 0 < ours["exact_match"] < ours["f1"] < 100
    assert M.normalize_answer("  The  Café, an   apple! ") == "café apple"


# ---- reading and bad input -----------------------------------------------------------------------------------
def test_reads_squad_json_v2_and_jsonl(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Who?", "answers": [{"text": "Andrew Bailey", "answer_start": CONTEXT.index("Andrew")}],
         "is_impossible": False},
        {"id": "b", "question": "Why?", "answers": [], "is_impossible": True}]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    data = read_squad(tmp_path / "d.json")
    assert [e.id for e in data.examples] == ["a", "b"] and data.has_impossible
    assert data.examples[0].answers == ["Andrew Bailey"] and data.examples[1].is_impossible
    rows = [{"id": "x", "question": "Who?", "context": CONTEXT,
             "answers": {"text": ["Barclays"], "answer_start": [CONTEXT.index("Barclays")]}},
            {"question": "Who?", "context": CONTEXT, "answers": [{"text": "Barclays",
                                                                   "answer_start": CONTEXT.index("Barclays")}]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_squad(tmp_path / "d.jsonl")
    assert [e.id for e in data.examples] == ["x", "2"] and not data.has_impossible
    assert all(e.answers == ["Barclays"] for e in data.examples)


def test_answer_not_at_its_offset_is_reported_by_line_skipped_and_counted(tmp_path, caplog):
    good = {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Barclays"],
                                                                "answer_start": [CONTEXT.index("Barclays")]}}
    bad = {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Barclays"], "answer_start": [3]}}
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in (good, bad, good, bad)) + "\n")
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        data = read_squad(f)
    assert len(data) == 2 and data.n_skipped == 2
    assert f"{f}, line 2" in caplog.text and f"{f}, line 4" in caplog.text and "'Barclays'" in caplog.text
    doc = {"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "?",
                                                                 "answers": [{"text": "x", "answer_start": 0}]}]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        assert read_squad(tmp_path / "d.json").n_skipped == 1
    assert "data[0].paragraphs[0].qas[0]" in caplog.text


@pytest.mark.parametrize(("line", "message"), [
    ('{"context": "c"}', "field 'question' is missing"),
    ('{"question": "q", "context": 3}', "field 'context' is int"),
    ('{"question": "q", "context": "c", "answers": {"text": ["c"]}}', "same length"),
    ('{"question": "q", "context": "c", "answers": [{"text": "c", "answer_start": "0"}]}', "integer 'answer_start'"),
    ('not json', "not valid JSON"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q", "context": "c"}\n' + line + "\n")
    with pytest.raises(InputFileError, match=message) as e:
        read_squad(f)
    assert e.value.line == 2


def test_no_room_for_the_context_names_the_sizes(minilm_dir):
    tok = Tokenizer.from_dir(minilm_dir)
    long_question = " ".join(["why"] * 40)
    with pytest.raises(ValueError, match=r"the question has 40 tokens.*3 special tokens.*-11 of max_length=32"):
        qa_features(qa_data([long_question], [CONTEXT]).examples, tok, 32, 8)
    with pytest.raises(ValueError, match=r"doc_stride=30 must be smaller than the 11 context tokens"):
        qa_features(qa_data(["why " * 18], [CONTEXT]).examples, tok, 32, 30)


def test_empty_context_answers_nothing(tmp_path, one_thread):
    model = bertkit.load_task_model(qa_model_dir("bert", tmp_path / "m"))
    got = model.predict(["Who?", "Who?"], ["", "Andrew Bailey spoke."])
    assert got[0]["answer"] == "" and (got[0]["start"], got[0]["end"]) == (0, 0)
    assert got[1]["answer"] != ""


def test_evaluate_scores_predictions_against_gold(tmp_path, one_thread):
    d = qa_model_dir("bert", tmp_path / "m")
    model = bertkit.load_task_model(d)
    preds = model.predict(QUESTIONS, [CONTEXT] * len(QUESTIONS))
    # gold = the model's own answers for the first two, something else for the rest
    rows = [{"question": q, "context": CONTEXT,
             "answers": {"text": [p["answer"]], "answer_start": [p["start"]]}} if i < 2 else
            {"question": q, "context": CONTEXT, "answers": {"text": ["Barclays"],
                                                            "answer_start": [CONTEXT.index("Barclays")]}}
            for i, (q, p) in enumerate(zip(QUESTIONS, preds, strict=True))]
    f = tmp_path / "gold.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    scores = model.evaluate(read_squad(f))
    ref = official_scores([[r["answers"]["text"][0]] for r in rows], [p["answer"] for p in preds])
    assert scores["exact_match"] == pytest.approx(ref["exact_match"]) and scores["exact_match"] >= 50
    assert scores["f1"] == pytest.approx(ref["f1"])
