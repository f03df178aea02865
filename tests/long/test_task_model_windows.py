"""Task models on long inputs: chunking a short text is truncation, a long text's windows are what they should be
and their logits are pooled / gathered as stated, on every position scheme (BERT, RoBERTa's padding_idx offset,
DeBERTa-v3's relative positions, ModernBERT's rotary ones)."""

import numpy as np
import pytest

from bertkit.data.chunking import UNTRUNCATED
from bertkit.data.features import Features
from bertkit.data.tasks import TaskData
from bertkit.data.windows import central_window, window_spans
from bertkit.inference.token_aggregation import TokenAggregator
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import task_model

FAMILIES = ("bert", "roberta", "deberta-v3", "modernbert")
SHORT = ["A man is playing a guitar.", "hi"]
LONG = " ".join(["Stocks fell sharply after the central bank raised interest rates again."] * 12)


@pytest.fixture(scope="module", params=FAMILIES)
def models(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return (task_model(request.param, d / "cls"),
            task_model(request.param, d / "ner", task="ner", labels=("O", "B-X", "I-X")))


def _data(texts, pairs=None):
    return TaskData("classification", list(texts), pairs, [], None, "test")


def _window_logits(tm: TaskModel, rows: list[list[int]], types: list[list[int]]) -> list[np.ndarray]:
    """Logits of hand-built sequences, one row each, through the ordinary (unwindowed) path."""
    out, _ = tm.logits(Features(rows, types, None, None, 0))
    return out


def test_a_short_text_gives_exactly_the_truncation_result(models):
    cls, ner = models
    for tm, inputs in ((cls, SHORT), (ner, [t.split() for t in SHORT])):
        trunc = tm.logits(tm.featurize(_ner_data(inputs) if tm is ner else _data(inputs), False))[0]
        chunk = tm.logits(tm.featurize(_ner_data(inputs) if tm is ner else _data(inputs), False, "chunk", 3))[0]
        assert all(np.array_equal(a, b) for a, b in zip(trunc, chunk, strict=True))
    assert cls.predict(SHORT) == cls.predict(SHORT, long_inputs="chunk", stride=5)


def _ner_data(words):
    return TaskData("ner", [], None, [["O"] * len(w) for w in words], words, "test")


@pytest.mark.parametrize("how", ["mean", "max"])
def test_long_text_logits_are_the_pooled_logits_of_its_windows(models, how):
    tm, _ = models
    tok, stride = tm.tokenizer, 10
    content = tok.encode_plain([LONG])[0]
    size = tm.max_length - tok.num_special_tokens()
    spans = window_spans(len(content), size, stride)
    assert len(spans) > 2
    built = [tok.build_inputs(content[s:e]) for s, e in spans]
    by_hand = np.stack(_window_logits(tm, [b[0] for b in built], [b[1] for b in built]))
    feats = tm.featurize(_data([SHORT[0], LONG]), False, "chunk", stride)
    assert feats.ids[1:] == [b[0] for b in built]
    assert feats.ids[1] == tm.featurize(_data([LONG]), False).ids[0]  # the first window is the truncated text
    logits, _ = tm.logits(feats, window_pooling=how)
    assert len(logits) == 2
    np.testing.assert_allclose(logits[1], by_hand.mean(0) if how == "mean" else by_hand.max(0), rtol=1e-5,
                               atol=1e-6)
    pred = tm.predict([LONG], long_inputs="chunk", stride=stride, window_pooling=how)[0]
    p = np.exp(logits[1] - logits[1].max())
    assert pred["label"] == tm.labels[int(p.argmax())]


def test_ner_tokens_come_from_their_most_central_window(models):
    _, tm = models
    tok, stride = tm.tokenizer, 12
    words = LONG.split()
    feats = tm.featurize(_ner_data([words]), False, "chunk", stride)
    win = feats.windows
    assert win is not None and win.n_windowed == 1
    content_wids = win.example_word_ids[0]
    assert content_wids[0] == 0 and content_wids[-1] == len(words) - 1 and None not in content_wids
    per_window = _window_logits(tm, feats.ids, feats.type_ids)
    best = central_window(win.spans, len(content_wids))
    lead = tok.build_inputs([-1])[0].index(-1)
    expected = np.stack([per_window[best[t]][lead + t - win.spans[best[t]][0]] for t in range(len(content_wids))])
    logits, _ = tm.logits(feats)
    assert np.array_equal(logits[0], expected)
    tags = tm.predict([words], long_inputs="chunk", stride=stride)[0]["tags"]
    assert len(tags) == len(words)
    first_piece = [t for t, w in enumerate(content_wids) if t == 0 or content_wids[t - 1] != w]
    assert tags == [tm.labels[int(expected[t].argmax())] for t in first_piece]


def test_pairs_keep_the_first_text_and_window_the_second(models):
    tm, _ = models
    query = "what did the bank do?"
    feats = tm.featurize(_data([query], [LONG]), False, "chunk", 4)
    win = feats.windows
    q = tm.tokenizer.encode_plain([query])[0]
    assert win.n_windowed == 1 and len(feats) > 1
    passage = tm.tokenizer.encode_plain([LONG])[0]
    for ids, (s, e), start in zip(feats.ids, win.spans, win.starts, strict=True):
        assert len(ids) <= tm.max_length
        assert ids == tm.tokenizer.build_inputs(q, passage[s:e])[0]  # the whole query, a window of the passage
        assert ids[start:start + e - s] == passage[s:e]
    assert win.spans[-1][1] == len(passage)
    with pytest.raises(ValueError, match="no room for the second text"):
        tm.featurize(_data([LONG], [LONG]), False, "chunk")


def test_stride_must_be_smaller_than_the_window(models):
    tm, _ = models
    size = tm.max_length - tm.tokenizer.num_special_tokens()
    with pytest.raises(ValueError, match=f"--stride {size} must be smaller than the window"):
        tm.predict(SHORT, long_inputs="chunk", stride=size)
    with pytest.raises(ValueError, match="long_inputs must be one of truncate, chunk"):
        tm.predict(SHORT, long_inputs="split")
    with pytest.raises(ValueError, match="window_pooling must be one of mean, max"):
        tm.predict(SHORT, window_pooling="median")


def test_the_choice_is_saved_with_the_model(models, tmp_path):
    tm, _ = models
    tm.long_inputs, tm.stride, tm.window_pooling = "chunk", 7, "max"
    try:
        tm.save_pretrained(tmp_path / "m")
    finally:
        tm.long_inputs, tm.stride, tm.window_pooling = "truncate", None, "mean"
    back = TaskModel.from_pretrained(tmp_path / "m")
    assert (back.long_inputs, back.stride, back.window_pooling) == ("chunk", 7, "max")
    assert back.predict([LONG]) == tm.predict([LONG], long_inputs="chunk", stride=7, window_pooling="max")


@pytest.mark.parametrize("strategy", ["none", "simple", "first"])
def test_raw_text_ner_reads_every_token_in_windows(models, strategy):
    """Raw-text NER with long_inputs="chunk": each token's logits from its most central window, aggregated over the
    whole text (entities and character offsets past max_length); a short text is tagged as truncation tags it."""
    _, tm = models
    tok, stride = tm.tokenizer, 12
    assert tm.predict(SHORT, aggregation_strategy=strategy, long_inputs="chunk", stride=stride) == tm.predict(
        SHORT, aggregation_strategy=strategy)
    content = tok.encode_plain([LONG])[0]
    size = tm.max_length - tok.num_special_tokens()
    spans = window_spans(len(content), size, stride)
    assert len(spans) > 2
    built = [tok.build_inputs(content[s:e]) for s, e in spans]
    per_window = _window_logits(tm, [b[0] for b in built], [b[1] for b in built])
    lead = tok.build_inputs([-1])[0].index(-1)
    best = central_window(spans, len(content))
    full = tok.encode_offsets([LONG], UNTRUNCATED)
    assert [i for i, s in zip(full.ids[0], full.special_mask[0], strict=True) if not s] == content
    rows = np.zeros((len(full.ids[0]), len(tm.labels)), np.float32)
    for t in range(len(content)):
        rows[lead + t] = per_window[best[t]][lead + t - spans[best[t]][0]]
    expected = TokenAggregator(tok, tm.labels, "bio").entities(LONG, full.ids[0], full.offsets[0],
                                                               full.special_mask[0], rows, strategy)
    got = tm.predict([LONG], aggregation_strategy=strategy, long_inputs="chunk", stride=stride)[0]
    assert got == {"text": LONG, "entities": expected}
    truncated = tm.predict([LONG], aggregation_strategy=strategy)[0]["entities"]
    cut = tok.encode_offsets([LONG], tm.max_length).offsets[0][-2][1]  # the end of the last token truncation keeps
    assert all(e["end"] <= cut for e in truncated)
    if strategy == "none":  # a random head tags most tokens: the windows reach past the cut
        assert max(e["end"] for e in expected) > cut
