"""Training a BERT WordPiece vocabulary with HF ``tokenizers``, saved so that transformers loads it too.

The pipeline is BERT's: BertNormalizer (lower-casing and accent stripping together), BertPreTokenizer (split on
whitespace and punctuation), WordPiece with ``##`` continuation, ``[CLS] A [SEP] (B [SEP])`` post-processing.
``[PAD] [UNK] [CLS] [SEP] [MASK]`` take ids 0..4. The vocabulary size is rounded up to a multiple of ``round_to``
(64, as MosaicBERT does: embedding and output matrices then tile evenly on GPUs); when the trainer learns fewer
tokens, ``[unused0]``, ``[unused1]``, ... fill the gap, as in Google's BERT vocabularies.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertkit.data.corpus import ReadStats, iter_documents
from bertkit.errors import BertkitError, ConfigError
from bertkit.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("bertkit")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, in this order
MODEL_MAX_LENGTH = 512


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def train_wordpiece(corpus: Sequence[str | os.PathLike[str]], vocab_size: int, output_dir: str | os.PathLike[str],
                    lowercase: bool = True, round_to: int = 64, min_frequency: int = 2) -> Path:
    """Train a WordPiece vocabulary on ``corpus`` (files, folders or built-in corpus names, see
    ``bertkit.data.corpus``) and write tokenizer.json, vocab.txt, tokenizer_config.json and
    special_tokens_map.json into ``output_dir``. Returns ``output_dir``.

    The final size is ``vocab_size`` rounded up to a multiple of ``round_to``; a corpus too small to yield that
    many tokens gets a smaller vocabulary (still a multiple of ``round_to``) and a warning.
    """
    if round_to < 1:
        raise ConfigError(f"round_to is {round_to}; expected a positive integer (1 disables rounding)")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size is {vocab_size}; it must exceed the {len(SPECIAL_TOKENS)} special tokens")
    target = round_up(vocab_size, round_to)

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=target, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##",
                                        show_progress=False)
    stats = ReadStats()
    tok.train_from_iterator(iter_documents(corpus, stats), trainer=trainer)
    vocab = tok.get_vocab()
    learned = len(vocab)
    if stats.n_docs == 0 or learned <= len(SPECIAL_TOKENS):
        raise BertkitError(f"corpus {', '.join(map(str, corpus))}: no text to train a vocabulary on")
    if [vocab.get(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise AssertionError(f"the trainer did not put {SPECIAL_TOKENS} at ids 0..4")  # tokenizers changed behaviour

    final = round_up(learned, round_to)
    if learned < vocab_size:
        log.warning("the corpus yields only %d tokens, fewer than the %d asked for; the vocabulary has %d",
                    learned, vocab_size, final)
    # The trainer orders tokens of equal frequency differently from run to run (a hash map inside), so the same
    # corpus gave different ids. WordPiece matching does not depend on ids: number the learned tokens in sorted
    # order (words, then '##' pieces), so the same corpus always gives the same vocab.txt. Then fill up to the
    # multiple with [unusedN]; a new model object either way, as the trained one cannot be renumbered.
    learned_tokens = sorted((t for t in vocab if t not in SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), t))
    order = [*SPECIAL_TOKENS, *learned_tokens, *(f"[unused{i}]" for i in range(final - learned))]
    vocab = {t: i for i, t in enumerate(order)}
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    assert tok.get_vocab_size(with_added_tokens=True) == final

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    atomic_write_text(out / "vocab.txt", "".join(t + "\n" for t, _ in by_id))
    names = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
             "mask_token": "[MASK]"}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "strip_accents": lowercase,
              "tokenize_chinese_chars": True, "model_max_length": MODEL_MAX_LENGTH, **names}
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(names, indent=2) + "\n")
    log.info("trained a WordPiece vocabulary of %d tokens (%d learned) on %d documents -> %s",
             final, learned, stats.n_docs, out)
    return out
