"""FillMask against transformers' BertForMaskedLM, and cloze-prompt classification on tiny models."""

import json
import logging

import numpy as np
import pytest
import torch

from bertkit.cli.main import main
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import BertkitError
from bertkit.fill_mask import FillMask, PromptClassifier
from bertkit.model.mlm import MaskedLM
from tests.conftest import save_tiny_hf_model

transformers = pytest.importorskip("transformers")

TEMPLATE = "{text} It was [MASK]."
VERBALIZERS = {"pos": ["great"], "neg": ["terrible", "awful"]}


@pytest.fixture
def fm(mlm_dir, one_thread):
    return FillMask.from_pretrained(mlm_dir)


def test_fill_mask_matches_transformers(fm, mlm_dir):
    text = "the capital of france is [MASK] ."
    (preds,) = fm(text, top_k=5)
    scores = [p["score"] for p in preds]
    assert fm.head_trained and len(preds) == 5 and scores == sorted(scores, reverse=True)
    ids = fm.tokenize([text])[0]
    pos = ids.index(fm.tokenizer.mask_id)
    hf = transformers.BertForMaskedLM.from_pretrained(mlm_dir).eval()
    with torch.inference_mode():
        ref = hf(input_ids=torch.tensor([ids])).logits[0, pos]
        flat, packing = fm.pack([ids])
        ours = fm.mask_logits(flat, packing)[0]
    assert (ours - ref).abs().max() <= 1e-4
    probs = ours.softmax(-1)
    assert abs(float(probs.sum()) - 1) <= 1e-5 and abs(float(probs.max()) - scores[0]) <= 1e-6
    assert preds[0]["token_id"] == int(ref.argmax())
    assert preds[0]["token"] == fm.tokenizer.convert_ids_to_tokens([preds[0]["token_id"]])[0]
    assert "[MASK]" not in preds[0]["sequence"] and preds[0]["sequence"].startswith("the capital of france is")


def test_several_masks_and_texts(fm):
    out = fm(["a [MASK] b [MASK] c", "one [MASK]", "[MASK]"], top_k=3)
    assert [len(masks) for masks in out] == [2, 1, 1] and all(len(p) == 3 for m in out for p in m)
    # each mask gets its own prediction; the other mask stays visible in the filled-in sequence
    first, second = out[0]
    assert first[0]["sequence"].count("[MASK]") == 1 and second[0]["sequence"].count("[MASK]") == 1
    alone = fm("one [MASK]", top_k=3)[0]  # batching does not change a text's result (up to rounding)
    assert [p["token_id"] for p in out[1][0]] == [p["token_id"] for p in alone]
    assert np.allclose([p["score"] for p in out[1][0]], [p["score"] for p in alone], rtol=1e-4)


def test_no_mask_is_an_error_naming_the_text(fm):
    with pytest.raises(BertkitError, match="text 1 has no \\[MASK\\]"):
        fm(["a [MASK]", "no mask here"])


def test_model_without_head_warns(tmp_path, minilm_dir, one_thread, caplog):
    save_tiny_hf_model(tmp_path, minilm_dir)
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        fm = FillMask.from_pretrained(tmp_path)
    assert not fm.head_trained and "no trained MLM head" in caplog.text


def test_prompt_errors(fm):
    with pytest.raises(BertkitError, match="label 'neg': verbalizer 'zzqxjv'"):
        PromptClassifier(fm, TEMPLATE, {"pos": ["great"], "neg": ["zzqxjv"]})
    with pytest.raises(BertkitError, match="\\[MASK\\] exactly once"):
        PromptClassifier(fm, "{text} It was good.", VERBALIZERS)
    with pytest.raises(BertkitError, match="\\{text\\} exactly once"):
        PromptClassifier(fm, "It was [MASK].", VERBALIZERS)
    with pytest.raises(BertkitError, match="same token"):
        PromptClassifier(fm, TEMPLATE, {"pos": ["great"], "neg": ["Great"]})
    clf = PromptClassifier(fm, TEMPLATE, VERBALIZERS)
    with pytest.raises(BertkitError, match="labels\\[1\\] is 'meh'"):
        clf.evaluate(["a", "b"], ["pos", "meh"])


def test_predict_proba_and_truncation(fm):
    clf = PromptClassifier(fm, TEMPLATE, VERBALIZERS)
    p = clf.predict_proba(["fine film", "bad film " * 200, "ok"])
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    ids = clf.encode(["bad film " * 200])[0]
    # the long text was cut, the template kept whole
    assert len(ids) == fm.max_length and ids.count(fm.tokenizer.mask_id) == 1
    assert ids[-len(clf._tail) - 1:-1] == clf._tail


def test_head_bias_decides_the_label(mlm_dir, one_thread):
    model = MaskedLM.from_pretrained(mlm_dir)
    tok = WordPieceTokenizer.from_dir(mlm_dir)
    awful = tok.encode_plain(["awful"])[0][0]
    with torch.no_grad():
        model.head.bias[awful] = 50.0
    clf = PromptClassifier(FillMask(model, tok, max_length=64), TEMPLATE, VERBALIZERS)
    p = clf.predict_proba(["a great day", "what a movie"])
    assert clf.predict(["a great day", "what a movie"]) == ["neg", "neg"] and (p[:, 1] > 0.99).all()


def test_few_shot_fit_learns_a_separable_toy_set(fm):
    texts = [f"{w} {x}" for w in ("good", "bad") for x in ("food", "movie", "day", "book")]
    labels = ["pos" if t.startswith("good") else "neg" for t in texts]
    clf = PromptClassifier(fm, TEMPLATE, VERBALIZERS)
    assert clf.evaluate(texts, labels)["accuracy"] == 0.5  # a random head: one label for everything
    losses = clf.fit(texts, labels, epochs=30, lr=3e-3, batch_size=8)
    assert losses[-1] < losses[0] * 0.2
    assert clf.evaluate(texts, labels) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_cli_fill_mask_json(mlm_dir, one_thread, capsys):
    assert main(["fill-mask", str(mlm_dir), "hello [MASK]", "[MASK] and [MASK]", "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in out] == ["hello [MASK]", "[MASK] and [MASK]"]
    assert [len(r["masks"]) for r in out] == [1, 2] and len(out[0]["masks"][0]) == 2
    assert set(out[0]["masks"][0][0]) == {"token", "token_id", "score", "sequence"}


def test_cli_fill_mask_table_and_error(mlm_dir, one_thread, capsys):
    assert main(["fill-mask", str(mlm_dir), "hello [MASK]"]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["fill-mask", str(mlm_dir), "no mask"]) == 2
    assert "text 0 has no [MASK]" in capsys.readouterr().err
