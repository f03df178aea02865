"""MLM masking: rates, 80/10/10, whole words, special tokens, and draws that depend on the sequence alone."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.masking import MaskingConfig, VocabInfo, mask_sequences

V, CLS, SEP, PAD, MASK, UNK = 1000, 1, 2, 0, 3, 4


def vocab(continuation_ids=()):
    special = np.zeros(V, dtype=bool)
    special[[CLS, SEP, PAD, MASK, UNK]] = True
    cont = np.zeros(V, dtype=bool)
    cont[list(continuation_ids)] = True
    return VocabInfo(V, MASK, special, cont)


def rows(n, s, seed=0):
    ids = np.random.default_rng(seed).integers(10, V, (n, s))
    ids[:, 0] = CLS
    ids[:, s // 2] = SEP
    ids[:, -1] = SEP
    return ids


def test_rate_and_replacement_split():
    ids = rows(400, 128)
    m = mask_sequences(ids, np.arange(400), seed=1, epoch=0, vocab=vocab(), cfg=MaskingConfig(rate=0.3))
    eligible = (~vocab().special[ids]).sum()
    rate = len(m.positions) / eligible
    assert abs(rate - 0.3) < 0.01, rate
    flat_in = m.input_ids.reshape(-1)[m.positions]
    to_mask = (flat_in == MASK).mean()
    kept = (flat_in == m.targets).mean()  # includes random draws that hit the original (1/V)
    assert abs(to_mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.015, (to_mask, kept)
    # unchosen positions are untouched, targets are the originals
    chosen = np.zeros(ids.size, dtype=bool)
    chosen[m.positions] = True
    assert (m.input_ids.reshape(-1)[~chosen] == ids.reshape(-1)[~chosen]).all()
    assert (m.targets == ids.reshape(-1)[m.positions]).all()


def test_special_tokens_never_chosen():
    ids = rows(50, 64)
    m = mask_sequences(ids, np.arange(50), 0, 0, vocab(), MaskingConfig(rate=0.9))
    assert not vocab().special[ids.reshape(-1)[m.positions]].any()


def test_same_sequence_same_mask_whatever_the_batch():
    """What makes N ranks equal one: a row's mask depends on (seed, epoch, its key) only."""
    ids = rows(8, 32)
    keys = np.arange(100, 108)
    whole = mask_sequences(ids, keys, 7, 3, vocab(), MaskingConfig())
    half = mask_sequences(ids[4:], keys[4:], 7, 3, vocab(), MaskingConfig())
    assert (whole.input_ids[4:] == half.input_ids).all()
    other_epoch = mask_sequences(ids, keys, 7, 4, vocab(), MaskingConfig())
    assert not (other_epoch.input_ids == whole.input_ids).all()


def test_whole_word_groups_are_masked_together():
    cont = range(500, 1000)  # ids >= 500 are '##' continuations
    voc = vocab(cont)
    ids = rows(200, 64)
    m = mask_sequences(ids, np.arange(200), 0, 0, voc, MaskingConfig(rate=0.3, whole_word=True))
    chosen = np.zeros(ids.shape, dtype=bool).reshape(-1)
    chosen[m.positions] = True
    chosen = chosen.reshape(ids.shape)
    for i in range(len(ids)):
        for j in range(1, ids.shape[1]):
            if voc.continuation[ids[i, j]] and not voc.special[ids[i, j - 1]]:
                # a continuation piece is chosen exactly when the piece before it (same word) is
                assert chosen[i, j] == chosen[i, j - 1], (i, j)
    words = (~voc.special[ids] & ~voc.continuation[ids]).sum()
    chosen_words = (chosen & ~voc.continuation[ids]).sum()
    assert abs(chosen_words / words - 0.3) < 0.03


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), s=st.integers(4, 40), rate=st.floats(0.01, 0.5), ww=st.booleans())
def test_every_sequence_gets_at_least_one_prediction(n, s, rate, ww):
    ids = rows(n, s, seed=n * s)
    m = mask_sequences(ids, np.arange(n), 0, 0, vocab(range(800, 1000)), MaskingConfig(rate=rate, whole_word=ww))
    assert set(m.positions // s) == set(range(n))


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="masking rate"):
        MaskingConfig(rate=0.0).validate()
    with pytest.raises(ValueError, match="mask_fraction"):
        MaskingConfig(mask_fraction=0.95, random_fraction=0.1).validate()
