"""Integrated gradients (bertkit.explain): completeness on MiniLM and on tiny models of every family, zero for tokens
the model cannot see, independence from batching, determinism, targets, bad input, Captum's numbers, the HTML view."""

from __future__ import annotations

import copy
import html
import math
import re
import threading

import numpy as np
import pytest
import torch

from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import ConfigError
from bertkit.explain import explain, quadrature, replaced_output
from bertkit.explain_html import render
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head
from tests.compress.family_dirs import CORE, TEXTS, task_model

MINILM_TEXTS = ["A man is playing a guitar on the street.", "Stocks fell sharply after the central bank raised rates.",
                "I loved this film"]


@pytest.fixture(scope="module")
def minilm_classifier(minilm_dir) -> TaskModel:
    """MiniLM with a random 3-label head (weights large enough that the labels' logits differ)."""
    encoder, _ = load_pretrained(minilm_dir)
    torch.manual_seed(0)
    head = build_head(encoder, "classification", 3).eval()
    with torch.no_grad():
        head.classifier.weight.normal_(std=0.5)
    return TaskModel(head, Tokenizer.from_dir(minilm_dir), "classification", ["neg", "neu", "pos"], 64)


def gap(e) -> float:
    """|delta| relative to |F(x) - F(x')|."""
    return abs(e.delta) / abs(e.logit - e.baseline_logit)


def test_quadrature_integrates_polynomials_exactly():
    a, w = quadrature(5)
    assert math.isclose(w.sum(), 1.0) and ((a > 0) & (a < 1)).all()
    assert math.isclose(float((w * a**9).sum()), 1 / 10, rel_tol=1e-12)  # 5 Gauss-Legendre nodes: degree <= 9
    a, w = quadrature(11, "riemann_trapezoid")
    assert a[0] == 0 and a[-1] == 1 and math.isclose(w.sum(), 1.0)
    assert math.isclose(float((w * a).sum()), 0.5)  # exact for straight lines
    with pytest.raises(ConfigError, match="gausslegendre, riemann_trapezoid"):
        quadrature(5, "simpson")


def test_completeness_on_minilm(minilm_classifier, one_thread):
    """sum(attributions) = F(x) - F(x') up to the quadrature's error, which shrinks with more steps."""
    many = explain(minilm_classifier, MINILM_TEXTS, n_steps=50)
    few = explain(minilm_classifier, MINILM_TEXTS, n_steps=4)
    for e, e4 in zip(many, few, strict=True):
        assert abs(e.logit - e.baseline_logit) > 0.05  # a difference worth explaining
        assert gap(e) < 0.01, (e.text, e.delta, e.logit - e.baseline_logit)
        assert abs(e4.delta) > abs(e.delta)  # delta measures something: 4 steps are worse
        assert math.isclose(sum(e.scores) - (e.logit - e.baseline_logit), e.delta, abs_tol=1e-9)
        assert len(e.tokens) == len(e.scores) == len(e.spans)
        assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]" and e.spans[0][2] is None
        a, b, seq = e.spans[2]
        assert seq == 0 and e.text[a:b].lower() == e.tokens[2]  # offsets point into the text
    # the default target is the predicted label, and F(x) is the model's own logit for it
    preds = minilm_classifier.predict(MINILM_TEXTS)
    for e, p in zip(many, preds, strict=True):
        assert e.target == p["label"] and e.target_id == minilm_classifier.labels.index(p["label"])


def test_trapezoid_converges_too(minilm_classifier, one_thread):
    e = explain(minilm_classifier, MINILM_TEXTS[:1], n_steps=64, method="riemann_trapezoid")[0]
    assert gap(e) < 0.02 and e.method == "riemann_trapezoid"


@pytest.mark.parametrize("variant", CORE)
def test_completeness_on_every_family(variant, tmp_path, one_thread):
    """Tiny random models of each family. DeBERTa-v3 adds no position embedding before its embedding LayerNorm, so
    the pad baseline (a zero vector, eps 1e-7) sits at LayerNorm's singular point: the integrand is a spike near
    a = 0 that 50 Gauss-Legendre nodes miss (~10% gap) and 200 resolve."""
    tm = task_model(variant, tmp_path)
    steps = 200 if variant == "deberta-v3" else 50
    for e in explain(tm, TEXTS, n_steps=steps):
        diff = e.logit - e.baseline_logit
        assert abs(e.delta) <= 0.01 * abs(diff) + 1e-5, (variant, e.text, e.delta, diff)
        assert any(abs(s) > 1e-6 for s in e.scores)


@pytest.mark.parametrize("task", ["pair-classification", "multilabel", "regression"])
def test_other_sequence_tasks(task, tmp_path, one_thread):
    tm = task_model("roberta", tmp_path, task=task, labels=("a", "b", "c") if task != "regression" else ("x",))
    pairs = ["the second text of the pair"] * 2 if task == "pair-classification" else None
    out = explain(tm, TEXTS[:2], pairs, n_steps=50)
    for e in out:
        assert abs(e.delta) <= 0.01 * abs(e.logit - e.baseline_logit) + 1e-5
    if task == "regression":
        assert out[0].target == "score" and out[0].target_id == 0
        assert explain(tm, TEXTS[:1], target="score")[0].scores == explain(tm, TEXTS[:1])[0].scores
    if task == "pair-classification":
        seqs = {s for _, _, s in out[0].spans}
        assert seqs == {None, 0, 1}
        a, b, _ = next(s for s in out[0].spans if s[2] == 1)
        assert pairs[0][a:b].strip()  # offsets of the second text point into it
        with pytest.raises(ConfigError, match="pairs"):
            explain(tm, TEXTS[:1])


def test_a_token_the_model_cannot_see_gets_zero(minilm_classifier, one_thread):
    """With every layer's attention output projection zeroed, no token reaches [CLS]'s state, which is all BERT's
    classifier reads: every text token must get exactly 0, and F(x) = F(x'). The intact model (the completeness
    test) gives them non-zero scores."""
    tm = minilm_classifier
    blind = TaskModel(copy.deepcopy(tm.model), tm.tokenizer, tm.task, tm.labels, tm.max_length)
    with torch.no_grad():
        for layer in blind.model.encoder.layers:
            layer.attn_out.weight.zero_()
            layer.attn_out.bias.zero_()
    e = explain(blind, MINILM_TEXTS[:1])[0]
    assert e.scores[1:-1] == [0.0] * (len(e.scores) - 2)
    assert e.logit == e.baseline_logit and e.delta == 0.0
    seen = explain(minilm_classifier, MINILM_TEXTS[:1])[0]
    assert min(abs(s) for s in seen.scores[1:-1]) > 0


def test_batching_does_not_change_attributions(minilm_classifier, one_thread):
    """Interpolation points share a packed pass: chunking them differently (or explaining texts together or
    alone) must not change any score beyond float rounding; sequences in one pass never see each other."""
    together = explain(minilm_classifier, MINILM_TEXTS, n_steps=20)
    chunked = explain(minilm_classifier, MINILM_TEXTS, n_steps=20, batch_size=3)
    alone = explain(minilm_classifier, MINILM_TEXTS[1:2], n_steps=20, batch_size=1)[0]
    for a, b in zip(together, chunked, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(alone.scores, together[1].scores, atol=1e-5)


def test_deterministic(minilm_classifier, one_thread):
    a = explain(minilm_classifier, MINILM_TEXTS[:2], n_steps=10)
    b = explain(minilm_classifier, MINILM_TEXTS[:2], n_steps=10)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]


def test_targets(minilm_classifier, one_thread):
    tm = minilm_classifier
    by_name = explain(tm, MINILM_TEXTS[:1], target="neg", n_steps=10)[0]
    by_id = explain(tm, MINILM_TEXTS[:1], target=0, n_steps=10)[0]
    by_id_text = explain(tm, MINILM_TEXTS[:1], target="0", n_steps=10)[0]
    assert by_name.target == by_id.target == "neg" and by_name.scores == by_id.scores == by_id_text.scores
    other = explain(tm, MINILM_TEXTS[:1], target="pos", n_steps=10)[0]
    assert other.scores != by_name.scores
    with pytest.raises(ConfigError, match="unknown target 'happy'; this model's labels are: neg, neu, pos"):
        explain(tm, MINILM_TEXTS[:1], target="happy")
    with pytest.raises(ConfigError, match="unknown target 3"):
        explain(tm, MINILM_TEXTS[:1], target=3)


def test_refuses_what_it_cannot_explain(minilm_classifier, tmp_path):
    ner = task_model("bert", tmp_path, task="ner", labels=("O", "B-X", "I-X"))
    with pytest.raises(ConfigError, match=r"sequence task models .* ner"):
        explain(ner, ["a b c"])
    int8 = copy.copy(minilm_classifier)
    int8.engine = Engine(EngineOptions(int8=True))
    with pytest.raises(ConfigError, match=r"fp32.*int8"):
        explain(int8, ["a text"])
    quantized = TaskModel(copy.deepcopy(minilm_classifier.model), minilm_classifier.tokenizer, "classification",
                          minilm_classifier.labels, 64)
    quantized.model.classifier.register_buffer("qweight", torch.zeros(3, 384, dtype=torch.int8))
    with pytest.raises(ConfigError, match="quantized"):
        explain(quantized, ["a text"])
    with pytest.raises(TypeError, match="list of texts"):
        explain(minilm_classifier, "a text")
    with pytest.raises(ConfigError, match="n_steps"):
        explain(minilm_classifier, ["a text"], n_steps=0)
    assert explain(minilm_classifier, []) == []


def test_model_left_as_it_was(minilm_classifier):
    """Dropout is off while explaining, the training mode comes back, and no hook is left behind."""
    head = minilm_classifier.model
    head.train()
    try:
        explain(minilm_classifier, MINILM_TEXTS[:1], n_steps=4)
        assert head.training and not head.encoder.embeddings.word._forward_hooks
    finally:
        head.eval()


def test_matches_captum(minilm_classifier, one_thread):
    """Captum's LayerIntegratedGradients on the word embeddings, same baseline and quadrature: the same numbers."""
    captum_attr = pytest.importorskip("captum.attr")
    from bertkit.data.batch import pack

    tm = minilm_classifier
    head = tm.model
    e = explain(tm, MINILM_TEXTS[:1], n_steps=50)[0]
    ids = torch.tensor([tm.tokenizer.encode(MINILM_TEXTS[:1], max_length=64).ids[0]])
    special = torch.tensor([[s is None for _, _, s in e.spans]])
    baseline = torch.where(special, ids, tm.tokenizer.pad_id)

    class Words(torch.nn.Module):  # batch-first word embeddings, as Captum's layer hooks need: (n, L) -> (n, L, e)
        def forward(self, batch_ids):
            return head.encoder.embeddings.word(batch_ids)

    words = Words()

    def forward(batch_ids):  # (n, L) -> (n, num_labels): the padding-free model on Captum's (n, L, e) points
        flat, types, packing = pack(batch_ids.tolist())
        with replaced_output(head.encoder.embeddings.word, flat, words(batch_ids).reshape(flat.shape[0], -1)):
            return head(flat, packing, types)

    lig = captum_attr.LayerIntegratedGradients(forward, words)
    attr, delta = lig.attribute(ids, baselines=baseline, target=e.target_id, n_steps=50, method="gausslegendre",
                                return_convergence_delta=True)
    np.testing.assert_allclose(attr.sum(-1)[0].detach().numpy(), e.scores, atol=1e-5, rtol=1e-4)
    assert abs(float(delta) - e.delta) < 1e-4


def test_html_view_escapes_and_colours(minilm_classifier, one_thread):
    text = "<script>alert('x')</script> & great"
    e = explain(minilm_classifier, [text], n_steps=4)[0]
    page = render([(e, minilm_classifier.predict([text])[0])])
    assert "<script" not in page and "</script" not in page and "&lt;" in page and "&amp;" in page
    cell = re.search(r'<td class="t">(.*?)</td>', page).group(1)
    shown = html.unescape(re.sub(r"<[^>]*>", "", re.sub(r'<span class="sp"[^>]*>.*?</span>', "", cell)))
    assert shown == text  # the tokens' spans (and the spaces between them) show the text itself
    assert page.count("rgba(214,39,40") + page.count("rgba(31,119,180") >= len(e.tokens) - 2
    assert "[CLS]" in page and e.target in page


def test_inference_in_another_thread_is_untouched(minilm_classifier, one_thread):
    """The server explains in a worker thread while its batcher runs the same module: the forward hook swaps the
    embeddings of the explanation's own ids only, and grad mode is per thread."""
    tm = minilm_classifier
    ref = tm.predict(MINILM_TEXTS)
    want = explain(tm, MINILM_TEXTS, n_steps=30)
    got, preds = [], []
    worker = threading.Thread(target=lambda: got.extend(explain(tm, MINILM_TEXTS, n_steps=30)))
    worker.start()
    while worker.is_alive() or not preds:
        preds.append(tm.predict(MINILM_TEXTS))
    worker.join()
    assert len(preds) > 1 and all(p == ref for p in preds)
    assert [e.scores for e in got] == [e.scores for e in want]


@pytest.mark.parametrize("variant", ["bert", "roberta", "deberta-v3"])  # WordPiece, byte-level BPE, SentencePiece
def test_word_scores_sum_the_pieces_of_each_word(variant, tmp_path, one_thread):
    tm = task_model(variant, tmp_path, task="pair-classification", labels=("no", "yes"))
    text, pair = "Café naïve façade, unbelievably", "a  second   text"
    e = explain(tm, [text], [pair], n_steps=4)[0]
    words = e.word_scores()
    assert [w["word"] for w in words] == text.split() + pair.split()
    assert [w["sequence"] for w in words] == [0] * 4 + [1] * 3
    assert all((text, pair)[w["sequence"]][w["start"]:w["end"]] == w["word"] for w in words)
    assert len(e.tokens) > len(words) + 4  # the tiny vocabularies split words into several pieces
    assert math.isclose(sum(w["score"] for w in words), sum(e.scores), rel_tol=1e-9, abs_tol=1e-12)
