"""Tag schemes: conversion both ways, detection, violations named by sentence and token, decoding as seqeval."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import BILOU, IOBES, Tokens

from bertkit import metrics as M
from bertkit.data.tag_schemes import (
    SCHEMES,
    SPAN_SCHEMES,
    TagSchemeError,
    check_scheme,
    convert,
    detect_scheme,
    from_spans,
    is_valid,
    resolve_scheme,
    to_spans,
    validate,
)
from bertkit.data.tasks import TaskData, read_task_file
from bertkit.errors import ConfigError

TYPES = ("PER", "LOC", "ORG")


@st.composite
def span_sets(draw):
    """A sentence length and a random set of non-overlapping, possibly adjacent spans in it."""
    n = draw(st.integers(0, 14))
    spans, i = [], 0
    while i < n:
        i += draw(st.integers(0, 2))  # 0: the next span touches the previous one
        if i >= n:
            break
        end = draw(st.integers(i + 1, min(n, i + 4)))
        spans.append((draw(st.sampled_from(TYPES)), i, end))
        i = end
    return n, spans


@settings(max_examples=300, deadline=None)
@given(span_sets())
def test_every_scheme_round_trips_spans(case):
    n, spans = case
    for scheme in SPAN_SCHEMES:
        tags = from_spans(spans, n, scheme)
        assert len(tags) == n and is_valid(tags, scheme), (scheme, tags)
        assert to_spans(tags, scheme) == spans  # spans -> tags -> the same spans
        assert from_spans(to_spans(tags, scheme), n, scheme) == tags  # and tags -> spans -> the same tags
        for other in SPAN_SCHEMES:
            assert convert(convert(tags, scheme, other), other, scheme) == tags
            assert to_spans(convert(tags, scheme, other), other) == spans
        validate(tags, scheme)


def test_written_forms():
    spans = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert from_spans(spans, 5, "bio") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert from_spans(spans, 5, "iob1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]
    assert from_spans(spans, 5, "bioes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]
    assert from_spans(spans, 5, "bilou") == ["B-PER", "L-PER", "U-PER", "O", "U-LOC"]
    with pytest.raises(ValueError, match="overlaps"):
        from_spans([("X", 0, 2), ("X", 1, 3)], 4)


ANY_TAG = st.sampled_from(["O", *(f"{p}-{t}" for p in "BIESLU" for t in ("A", "B"))])


@settings(max_examples=400, deadline=None)
@given(st.lists(ANY_TAG, max_size=12))
def test_decoding_matches_seqeval(tags):
    """bio/iob1: seqeval's default (CoNLL) chunking; bioes/bilou: its strict mode; on any tag sequence."""
    bio = [t for t in tags if t[0] in "OBI"]
    want = sorted((t, s, e + 1) for t, s, e in get_entities(bio))
    for scheme in ("bio", "iob1"):
        assert sorted(to_spans(bio, scheme)) == want
    for scheme, cls, letters in (("bioes", IOBES, "OBIES"), ("bilou", BILOU, "OBILU")):
        seq = [t for t in tags if t[0] in letters]
        want = sorted(e.to_tuple()[1:] for e in Tokens(seq, cls).entities)
        assert sorted(to_spans(seq, scheme)) == want, (scheme, seq)
        assert M.entity_spans(seq, scheme) == set(want)


@pytest.mark.parametrize(("sequences", "scheme"), [
    ([["B-PER", "I-PER", "O"], ["O"]], "bio"),
    ([["I-PER", "I-PER", "B-PER", "O"]], "iob1"),
    ([["B-PER", "E-PER", "S-LOC"]], "bioes"),
    ([["U-PER", "O", "B-LOC", "L-LOC"]], "bilou"),
    ([["NOUN", "VERB", "O"]], "plain"),
    ([["O", "O"]], "bio"),
    ([["I-PER", "B-PER"], ["I-LOC"]], "iob1"),  # B- only after its own type: IOB1 fits both sentences
    ([["B-PER", "I-PER"], ["I-LOC"]], "bio"),  # one sentence each: bio, whose validation then names I-LOC
    ([["B-PER", "I-PER"], ["I-LOC"], ["I-PER", "O"]], "iob1"),  # the majority's scheme
])
def test_detect(sequences, scheme):
    assert detect_scheme(sequences) == scheme


@pytest.mark.parametrize(("tags", "scheme", "message"), [
    (["O", "I-PER"], "bio", "token 2 ('w2'): I-PER follows O; BIO needs B-PER first"),
    (["O", "B-PER"], "iob1", "token 2 ('w2'): B-PER follows O; in IOB1"),
    (["B-PER", "O"], "bioes", "token 2 ('w2'): B-PER is followed by O; BIOES ends an entity with E-PER"),
    (["O", "E-PER"], "bioes", "token 2 ('w2'): E-PER follows O; BIOES needs B-PER before it"),
    (["B-PER"], "bilou", "token 1 ('w1'): B-PER ends the sentence; BILOU ends an entity with L-PER"),
    (["O", "S-PER"], "bio", "token 2 ('w2'): tag 'S-PER' is not BIO"),
    (["NOUN"], "bilou", "token 1 ('w1'): tag 'NOUN' is not BILOU"),
])
def test_violations_name_sentence_and_token(tags, scheme, message):
    pattern = "^train.conll, line 7: " + re.escape(message)
    with pytest.raises(TagSchemeError, match=pattern):
        validate(tags, scheme, "train.conll, line 7", [f"w{i + 1}" for i in range(len(tags))])


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown tag scheme 'iob2'; expected one of bio, iob1, bioes, bilou, plain"):
        check_scheme("iob2")
    with pytest.raises(ConfigError, match="expected one of auto, bio"):
        resolve_scheme("bilu", None)
    assert set(SCHEMES) == {"bio", "iob1", "bioes", "bilou", "plain"}


def test_resolve_detects_logs_and_names_the_file_line(tmp_path, caplog):
    (tmp_path / "train.conll").write_text("Peter\tI-PER\nlives\tO\n\nin\tO\nNew\tI-LOC\nYork\tI-LOC\n")
    data = read_task_file(tmp_path / "train.conll", "ner")
    with caplog.at_level(logging.INFO, logger="bertkit"):
        assert resolve_scheme("auto", data) == "iob1"
    assert "tag scheme: iob1 (detected on" in caplog.text
    with pytest.raises(TagSchemeError, match=r"train\.conll, line 1: token 1 \('Peter'\): I-PER starts the sentence"):
        resolve_scheme("bio", data)
    unnamed = TaskData("ner", [], None, [["O"], ["O", "E-X"]], [["a"], ["b", "c"]], "input")
    with pytest.raises(TagSchemeError, match=r"input: sentence 2: token 2 \('c'\): E-X follows O"):
        resolve_scheme("bioes", unnamed)


def test_plain_tag_scores():
    true = [["NOUN", "VERB", "NOUN"], ["DET", "NOUN"]]
    pred = [["NOUN", "NOUN", "NOUN"], ["DET", "VERB"]]
    s = M.entity_scores(true, pred, scheme="plain")
    assert s["token_accuracy"] == s["f1"] == pytest.approx(3 / 5)
    # NOUN: tp 2, predicted 3, true 3; VERB: tp 0, predicted 1, true 1; DET: 1/1/1
    assert s["precision/NOUN"] == pytest.approx(2 / 3) and s["recall/NOUN"] == pytest.approx(2 / 3)
    assert s["f1/VERB"] == 0.0 and s["f1/DET"] == 1.0
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    from sklearn.metrics import precision_recall_fscore_support

    flat_t, flat_p = [t for x in true for t in x], [t for x in pred for t in x]
    p, r, f, _ = precision_recall_fscore_support(flat_t, flat_p, average="macro", zero_division=0)
    assert (s["macro_precision"], s["macro_recall"], s["macro_f1"]) == pytest.approx((p, r, f))
