"""Token ids identical to transformers' fast BERT tokenizer for the same files."""

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!", "", "   ", "Ünïcödé àccents and CAPS", "中文字符 and emoji 🙂", "don't stop-believing...",
    "a " * 600, "tab\tseparated\nnewline", "[CLS] literal [SEP] tokens [MASK]", "x" * 300,
]


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt only"])
def pair(request, minilm_dir, tmp_path_factory):
    if request.param == "tokenizer.json":
        d = minilm_dir
    else:
        d = tmp_path_factory.mktemp("vocab")
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(minilm_dir / name, d / name)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    assert hf.is_fast
    return WordPieceTokenizer.from_dir(d), hf


def hf_ids(hf, texts, pairs=None, max_length=128):
    out = hf(texts, pairs, truncation=True, max_length=max_length)
    return out["input_ids"], out["token_type_ids"]


@pytest.mark.parametrize("max_length", [8, 128, 512])
def test_single_texts(pair, max_length):
    ours, hf = pair
    b = ours.encode(TEXTS, max_length=max_length)
    ids, types = hf_ids(hf, TEXTS, max_length=max_length)
    assert b.ids == ids and b.type_ids == types
    assert b.n_truncated == sum(len(x) > max_length for x in hf(TEXTS)["input_ids"])


def test_pairs(pair):
    ours, hf = pair
    a, b = TEXTS, list(reversed(TEXTS))
    got = ours.encode(a, b, max_length=64)
    ids, types = hf_ids(hf, a, b, max_length=64)
    assert got.ids == ids and got.type_ids == types


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5), st.integers(4, 80))
def test_property_random_text(minilm_dir, texts, max_length):
    ours = WordPieceTokenizer.from_dir(minilm_dir)
    hf = _hf_cache(minilm_dir)
    assert ours.encode(texts, max_length=max_length).ids == hf_ids(hf, texts, max_length=max_length)[0]


_cache = {}


def _hf_cache(d):
    if d not in _cache:
        _cache[d] = transformers.AutoTokenizer.from_pretrained(d)
    return _cache[d]


def test_empty_text_is_cls_sep(minilm_dir):
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    assert tok.encode(["", "  \n "]).ids == [[tok.cls_id, tok.sep_id]] * 2


def test_non_string_rejected(minilm_dir):
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tok.encode(["ok", 3])


def test_missing_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match=r"no tokenizer found; looked for tokenizer\.json, vocab\.json"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_save_round_trip(minilm_dir, tmp_path):
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    tok.save(tmp_path)
    again = WordPieceTokenizer.from_dir(tmp_path)
    assert again.encode(TEXTS, max_length=40).ids == tok.encode(TEXTS, max_length=40).ids
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_ids(hf, TEXTS, max_length=40)[0] == tok.encode(TEXTS, max_length=40).ids
