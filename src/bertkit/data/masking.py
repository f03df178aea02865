"""Masked-language-model inputs: which tokens to predict, and what the encoder sees in their place.

BERT's recipe: each non-special token is chosen with probability ``rate``; a chosen token is replaced by
the mask token (``[MASK]``, ``<mask>``, ...) 80% of the time, by a random token 10% and kept 10%. MosaicBERT
measured ``rate=0.3`` better than BERT's 0.15 for the same compute, so 0.3 is our default. With ``whole_word``
the choice is made per word (a word-start piece plus its continuations: WordPiece's ``##`` pieces, or for
byte-level BPE and SentencePiece the pieces without the ``Ġ`` / ``▁`` word-start marker) and covers all its
pieces.

The random draws of sequence ``g`` in epoch ``e`` come from ``default_rng([seed, e, g])`` alone, so a
sequence is masked the same way whichever rank, batch or resume it lands in: what makes a 2-process
run equal a 1-process run with the same global batch.

The output is *sparse*: the flat positions of the chosen tokens and their original ids, so the MLM
decoder (a 30k-wide matmul) runs on the chosen rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertkit.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class MaskingConfig:
    rate: float = 0.3
    mask_fraction: float = 0.8  # of chosen tokens: [MASK]
    random_fraction: float = 0.1  # of chosen tokens: a random token; the rest stay as they are
    whole_word: bool = False

    def validate(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"mlm masking rate must be in (0, 1), got {self.rate}")
        if not (0.0 <= self.mask_fraction and 0.0 <= self.random_fraction
                and self.mask_fraction + self.random_fraction <= 1.0):
            raise ValueError(f"mask_fraction ({self.mask_fraction}) + random_fraction ({self.random_fraction}) "
                             "must lie in [0, 1]")


@dataclass(frozen=True)
class VocabInfo:
    """What masking needs to know about a vocabulary."""

    size: int
    mask_id: int
    special: np.ndarray  # (vocab,) bool: never chosen (the tokenizer's special tokens: [CLS], <s>, [PAD], ...)
    continuation: np.ndarray  # (vocab,) bool: a piece that continues the previous token's word

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> VocabInfo:
        n = tok.vocab_size
        mask_id = tok.require_mask_id("masked-language-model training")
        special = np.zeros(n, dtype=bool)
        special[sorted(tok.special_ids)] = True
        continuation = np.zeros(n, dtype=bool)
        continuation[tok.continuation_ids()] = True
        return cls(n, mask_id, special, continuation)


@dataclass
class MaskedSequences:
    """input_ids (n, seq) with replacements; positions (m,) flat indices into (n * seq); targets (m,)."""

    input_ids: np.ndarray
    positions: np.ndarray
    targets: np.ndarray


def mask_sequences(ids: np.ndarray, keys: np.ndarray, seed: int, epoch: int, vocab: VocabInfo,
                   cfg: MaskingConfig) -> MaskedSequences:
    """Mask each row of ``ids`` (n, seq) int64 with draws keyed by (seed, epoch, keys[i]).

    At least one token per sequence is chosen when any is eligible, so no sequence contributes nothing.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n, s = ids.shape
    out = ids.copy()
    chosen = np.zeros((n, s), dtype=bool)
    for i in range(n):
        rng = np.random.default_rng([seed, epoch, int(keys[i])])
        row = ids[i]
        eligible = ~vocab.special[row]
        if cfg.whole_word:
            # word id of each token: a new word starts at every eligible piece that is not a '##' continuation,
            # or that follows a special token (a row can begin mid-word: packing cuts documents anywhere)
            after_special = np.concatenate([[True], vocab.special[row[:-1]]])
            starts = eligible & (~vocab.continuation[row] | after_special)
            word = np.cumsum(starts) - 1  # (seq,), -1 before the first word start
            n_words = int(starts.sum())
            pick = rng.random(n_words) < cfg.rate
            if n_words and not pick.any():
                pick[rng.integers(n_words)] = True
            sel = eligible & (word >= 0) & pick[np.maximum(word, 0)] if n_words else np.zeros(s, dtype=bool)
        else:
            sel = (rng.random(s) < cfg.rate) & eligible
            if not sel.any() and eligible.any():
                sel[rng.choice(np.flatnonzero(eligible))] = True
        chosen[i] = sel
        k = int(sel.sum())
        how = rng.random(k)
        replaced = np.where(how < cfg.mask_fraction, vocab.mask_id,
                            np.where(how < cfg.mask_fraction + cfg.random_fraction,
                                     rng.integers(0, vocab.size, k), row[sel]))
        out[i, sel] = replaced
    positions = np.flatnonzero(chosen)
    return MaskedSequences(out, positions, ids.reshape(-1)[positions])
