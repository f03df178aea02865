"""WordPiece tokenization through HF ``tokenizers`` (the Rust fast tokenizer).

Loaded from ``tokenizer.json`` when present, else built from ``vocab.txt`` with the same settings
transformers' ``BertTokenizerFast`` uses (lower-casing from ``tokenizer_config.json``). Padding is
never applied: the padding-free path wants each sequence at its own length.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from bertkit.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Batch:
    """Token ids of several texts, unpadded: ``ids[i]`` and ``type_ids[i]`` are lists of ints."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    n_truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class WordPieceTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: Path | None = None) -> None:
        self._tok = tokenizer
        self._lock = threading.Lock()  # truncation is tokenizer state: one encode at a time
        self._tok.no_padding()
        self._tok.no_truncation()
        self.source = source
        vocab = self._tok.get_vocab()
        for special in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"):
            if special not in vocab:
                raise CheckpointError(f"{source}: tokenizer vocabulary lacks the special token {special}")
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_id, self.mask_id, self.unk_id = vocab["[PAD]"], vocab["[MASK]"], vocab["[UNK]"]

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> WordPieceTokenizer:
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            try:
                return cls(Tokenizer.from_file(str(d / "tokenizer.json")), d)
            except Exception as e:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError(f"{d / 'tokenizer.json'}: cannot load tokenizer ({e})") from None
        if (d / "vocab.txt").is_file():
            cfg = {}
            if (d / "tokenizer_config.json").is_file():
                cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
            tok = BertWordPieceTokenizer(
                str(d / "vocab.txt"),
                lowercase=cfg.get("do_lower_case", True),
                strip_accents=cfg.get("strip_accents"),
                handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
                clean_text=True,
            )
            return cls(tok._tokenizer, d)
        raise CheckpointError(f"{d}: no tokenizer found; looked for tokenizer.json or vocab.txt")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 512) -> Batch:
        """Tokenize texts (or text pairs) with [CLS]/[SEP], truncating to ``max_length`` tokens.

        Pairs are truncated longest-first, as transformers' ``truncation=True`` does.
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        with self._lock:
            self._tok.enable_truncation(max_length, strategy="longest_first")
            try:
                encs = self._tok.encode_batch(inputs)
            finally:
                self._tok.no_truncation()
        n_trunc = sum(1 for e in encs if e.overflowing)
        return Batch([e.ids for e in encs], [e.type_ids for e in encs], n_trunc)

    def encode_words(self, words: list[list[str]], max_length: int = 512) -> tuple[Batch, list[list[int | None]]]:
        """Tokenize pre-split words (NER); also return, per token, the index of its word (None for specials).

        A word past the truncation point, or one that normalizes to nothing, has no tokens.
        """
        for i, w in enumerate(words):
            if not isinstance(w, list) or not all(isinstance(x, str) for x in w):
                raise TypeError(f"words[{i}] must be a list of str")
        with self._lock:
            self._tok.enable_truncation(max_length, strategy="longest_first")
            try:
                encs = self._tok.encode_batch(words, is_pretokenized=True)
            finally:
                self._tok.no_truncation()
        n_trunc = sum(1 for e in encs if e.overflowing)
        return Batch([e.ids for e in encs], [e.type_ids for e in encs], n_trunc), [e.word_ids for e in encs]

    def encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text without [CLS]/[SEP] and untruncated: pretraining packs documents itself."""
        with self._lock:  # encode() toggles truncation; wait for it to switch it off again
            encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def fingerprint(self) -> str:
        """sha256 of the whole tokenizer (vocabulary, normalizer, ...): tells caches built with it apart."""
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write tokenizer.json (and copy vocab.txt / configs from the source directory)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(d / "tokenizer.json"))
        if self.source is not None and self.source.resolve() != d.resolve():
            for name in TOKENIZER_FILES[1:]:
                if (self.source / name).is_file():
                    shutil.copyfile(self.source / name, d / name)
        if not (d / "vocab.txt").is_file():
            vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
            (d / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
