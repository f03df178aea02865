"""Tokenizer.encode_spans: the ids and truncation of encode, plus offsets into each text and which tokens the
template added, for every family's tokenizer and transformers' offsets."""

import pytest

from bertkit.data.tokenizer import Tokenizer
from tests.families.tokenizers import FAMILIES, make_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello, world!", "Ünïcödé àccents and CAPS", "a " * 40, "The function returns a list."]
PAIRS = ["second text", "x", "y " * 40, "another one here"]


@pytest.mark.parametrize("family", FAMILIES)
def test_spans_match_encode_and_transformers(family, tmp_path):
    make_tokenizer(family, tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for pairs in (None, PAIRS):
        batch, spans = tok.encode_spans(TEXTS, pairs, max_length=24)
        plain = tok.encode(TEXTS, pairs, max_length=24)
        assert batch.ids == plain.ids and batch.type_ids == plain.type_ids and batch.n_truncated == plain.n_truncated
        ref = hf(TEXTS, pairs, truncation=True, max_length=24, return_offsets_mapping=True,
                 return_special_tokens_mask=True)
        for i, row in enumerate(spans):
            assert len(row) == len(batch.ids[i])
            assert [(a, b) for a, b, _ in row] == [tuple(x) for x in ref["offset_mapping"][i]]
            assert [s is None for _, _, s in row] == [bool(m) for m in ref["special_tokens_mask"][i]]
            assert sum(s is None for _, _, s in row) == tok.num_special_tokens(pairs is not None)
            if pairs is not None:
                assert {s for _, _, s in row} == {None, 0, 1}
