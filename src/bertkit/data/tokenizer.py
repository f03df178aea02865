"""Tokenization for every encoder family through HF ``tokenizers`` (the Rust fast tokenizer).

A model directory's tokenizer is read (``data/tokenizer_files.py``), in this order of preference, from

``tokenizer.json``               any model type (WordPiece, byte-level BPE, Unigram/SentencePiece, ...), used as is
``vocab.json`` + ``merges.txt``  byte-level BPE built as transformers' ``RobertaTokenizer`` builds it
``vocab.txt``                    WordPiece built as transformers' ``BertTokenizer`` (or ``MPNetTokenizer``) builds it
``spm.model`` / ``sentencepiece.bpe.model``  a SentencePiece Unigram model of DeBERTa-v2/v3, XLM-R or CamemBERT
                                 (e.g. microsoft/deberta-v3-base ships no tokenizer.json), converted as transformers'
                                 class for the family converts it, with ``tokenizers`` alone (no sentencepiece)

Any other SentencePiece model without a tokenizer.json is refused with a message saying how to produce one.

Nothing about a family is hard-coded here except what transformers itself assumes when a file is silent:
special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` (else the defaults of the
family's transformers class, ``tokenizer_class``), and the single/pair templates (``[CLS] A [SEP] B [SEP]``,
``<s> A </s></s> B </s>``, ...) from tokenizer.json's post-processor. Ids, type ids and truncation (pairs:
longest-first) are transformers' fast tokenizer's with ``truncation=True, max_length=n``. Padding is never
applied: the padding-free path wants each sequence at its own length.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, models
from tokenizers import Tokenizer as Backend

from bertkit.data.tokenizer_files import ROLES, read_tokenizer_files
from bertkit.errors import CheckpointError, ConfigError
from bertkit.utils.atomic import atomic_path, atomic_write_text

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")  # save() writes
NO_LIMIT = 10**12  # model_max_length at or above this is transformers' "no limit" sentinel (int(1e30))

# A template item: ("special", ids, type_id) or ("sequence", 0 for A / 1 for B, type_id).
TemplateItem = tuple[str, Any, int]


@dataclass
class Batch:
    """Token ids of several texts, unpadded: ``ids[i]`` and ``type_ids[i]`` are lists of ints."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    n_truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


@dataclass
class PairOffsets:
    """A tokenized pair: ``ids_a``; ``ids_b`` with ``offsets_b`` [(start, end)] characters of each token in text B
    and ``words_b`` the index of its word (None where the tokenizer has no words)."""

    ids_a: list[int]
    ids_b: list[int]
    offsets_b: list[tuple[int, int]]
    words_b: list[int | None]


@dataclass
class OffsetBatch(Batch):
    """A ``Batch`` of raw texts with, per token, its ``(start, end)`` character offsets in its text ((0, 0) for
    special tokens) and whether the template added it (transformers' ``special_tokens_mask``)."""

    offsets: list[list[tuple[int, int]]]
    special_mask: list[list[int]]


class Tokenizer:
    """One model's tokenizer: encoding (unpadded, truncated as transformers does), its special tokens and
    templates, and saving in a form transformers loads to the same ids. Safe to share between threads."""

    def __init__(self, backend: Backend, special_tokens: dict[str, str | None], *, source: Path | None = None,
                 config: dict | None = None, tokenizer_class: str | None = None,
                 additional_special_tokens: Sequence[str] = ()) -> None:
        """``special_tokens``: role (cls, sep, pad, mask, unk, bos, eos) -> token text, None where the model has none.
        A named token that is not yet an added token of ``backend`` becomes one (special), as transformers does."""
        self._tok = backend
        self._lock = threading.Lock()  # truncation is tokenizer state: one encode at a time
        self._tok.no_padding()
        self._tok.no_truncation()
        self._words_tok: Backend | None = None  # built on first encode_words (byte-level BPE needs its own)
        self.source = source
        self.config = dict(config or {})
        self.tokenizer_class = tokenizer_class
        self.additional_special_tokens = [t for t in dict.fromkeys(additional_special_tokens) if t is not None]
        where = source if source is not None else "tokenizer"

        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys([*special_tokens.values(), *additional_special_tokens])
                   if t is not None and t not in added]
        if missing:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.special_tokens = dict.fromkeys(ROLES) | dict(special_tokens)
        self._ids: dict[str, int | None] = {r: self._tok.token_to_id(t) if t is not None else None
                                            for r, t in self.special_tokens.items()}
        self._single, self._pair = parse_template(_component(self._tok.post_processor), where)
        # a tokenizer.json that names no cls/sep anywhere: the template's first and last special tokens
        for role, pos in (("cls", 0), ("sep", -1)):
            if self._ids[role] is None and self._single and self._single[pos][0] == "special" \
                    and len(self._single[pos][1]) == 1:
                self._ids[role] = self._single[pos][1][0]
                self.special_tokens[role] = self._tok.id_to_token(self._ids[role])
        if self._ids["unk"] is None:
            self._ids["unk"] = _model_unk_id(self._tok)
            self.special_tokens["unk"] = None if self._ids["unk"] is None else self._tok.id_to_token(self._ids["unk"])
        specials = {i for i in self._ids.values() if i is not None}
        specials |= {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        specials |= {i for t in additional_special_tokens if (i := self._tok.token_to_id(t)) is not None}
        self.special_ids: frozenset[int] = frozenset(specials)
        self.template_ids: frozenset[int] = frozenset(
            i for item in (*self._single, *self._pair) if item[0] == "special" for i in item[1])

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer of a model directory (see the module docstring for the files read, in order); a
        CheckpointError naming the file when none is there or one cannot be read."""
        f = read_tokenizer_files(directory)
        return cls(f.backend, f.special_tokens, source=Path(directory), config=f.config,
                   tokenizer_class=f.tokenizer_class, additional_special_tokens=f.additional_special_tokens)

    # ---- special tokens --------------------------------------------------------------------------------------
    def token_id(self, role: str) -> int | None:
        """Id of the ``role`` token (cls, sep, pad, mask, unk, bos, eos), None when the model has none."""
        if role not in self._ids:
            raise ValueError(f"unknown special-token role {role!r}; expected one of {', '.join(ROLES)}")
        return self._ids[role]

    def require(self, role: str, purpose: str = "") -> int:
        """Id of the ``role`` token; a CheckpointError naming it when the model has none."""
        i = self.token_id(role)
        if i is None:
            name = self.special_tokens.get(role)
            why = (f"its {role} token {name!r} is not in the vocabulary" if name is not None
                   else f"tokenizer_config.json names no {role}_token")
            raise CheckpointError(f"{self.source or 'tokenizer'}: the tokenizer has no {role} token ({why})"
                                  + (f"; {purpose} needs one" if purpose else ""))
        return i

    def require_mask_id(self, purpose: str = "masked-language modelling") -> int:
        return self.require("mask", purpose)

    @property
    def cls_id(self) -> int:
        return self.require("cls")

    @property
    def sep_id(self) -> int:
        return self.require("sep")

    @property
    def pad_id(self) -> int:
        return self.require("pad")

    @property
    def unk_id(self) -> int:
        return self.require("unk")

    @property
    def mask_id(self) -> int | None:
        """None when the model has no mask token: callers that need one use ``require_mask_id()``."""
        return self._ids["mask"]

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos"]

    @property
    def model_max_length(self) -> int | None:
        """tokenizer_config.json's ``model_max_length``; None when absent or transformers' "no limit" sentinel.
        The model's own limit (e.g. RoBERTa's max_position_embeddings - 2) may be lower."""
        n = self.config.get("model_max_length")
        return int(n) if isinstance(n, int | float) and 0 < n < NO_LIMIT else None

    # ---- templates -------------------------------------------------------------------------------------------
    def num_special_tokens(self, pair: bool = False) -> int:
        """Tokens the template adds around one text (``pair=False``) or a pair: 2 and 3 for BERT, 2 and 4 for
        RoBERTa."""
        return sum(len(item[1]) for item in (self._pair if pair else self._single) if item[0] == "special")

    def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
        """Wrap already-tokenized ids in the model's template: ``(ids, type_ids)``, as ``encode`` would give for
        the texts that produced them (no truncation)."""
        ids: list[int] = []
        types: list[int] = []
        for kind, what, type_id in self._single if ids_b is None else self._pair:
            part = what if kind == "special" else (ids_a if what == 0 else ids_b)
            ids.extend(part)
            types.extend([type_id] * len(part))
        return ids, types

    def second_start(self, n_a: int) -> int:
        """Position of the second text's first token in ``build_inputs(ids_a, ids_b)`` when ids_a has ``n_a``
        tokens (1 + n_a for BERT's [CLS] A [SEP] B [SEP], 2 + n_a for RoBERTa's <s> A </s></s> B </s>)."""
        pos = 0
        for kind, what, _ in self._pair:
            if kind == "sequence" and what == 1:
                return pos
            pos += len(what) if kind == "special" else n_a
        raise ConfigError(f"{self.source or 'tokenizer'}: the pair template has no second sequence")

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode_pairs_with_offsets(self, texts_a: list[str], texts_b: list[str]) -> list[PairOffsets]:
        """Each pair tokenized untruncated, as transformers' fast tokenizer tokenizes it: the first text's ids, and
        the second's ids with each token's character offsets in its text and its word index (extractive QA maps
        token spans back to the context with them)."""
        if len(texts_a) != len(texts_b):
            raise ValueError(f"{len(texts_a)} first texts but {len(texts_b)} second texts")
        with self._lock:  # encode() toggles truncation; wait for it to switch it off again
            encs = self._tok.encode_batch(list(zip(texts_a, texts_b, strict=True)))
        out = []
        for e in encs:
            seq = e.sequence_ids
            a = [i for i, s in enumerate(seq) if s == 0]
            b = [i for i, s in enumerate(seq) if s == 1]
            out.append(PairOffsets([e.ids[i] for i in a], [e.ids[i] for i in b], [e.offsets[i] for i in b],
                                   [e.word_ids[i] for i in b]))
        return out

    def _check_max_length(self, max_length: int, pair: bool) -> None:
        n = self.num_special_tokens(pair)
        if max_length < max(n, 1):
            # the Rust tokenizer would silently return untruncated sequences here
            raise ConfigError(f"max_length {max_length} is shorter than the {n} special tokens the tokenizer adds to "
                              f"{'a pair' if pair else 'a text'}")

    def encode(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 512) -> Batch:
        """Tokenize texts (or text pairs) with the model's template, truncating to ``max_length`` tokens.

        Pairs are truncated longest-first, as transformers' ``truncation=True`` does.
        """
        encs = self._encodings(texts, pairs, max_length)
        n_trunc = sum(1 for e in encs if e.overflowing)
        return Batch([e.ids for e in encs], [e.type_ids for e in encs], n_trunc)

    def _encodings(self, texts: list[str], pairs: list[str] | None, max_length: int) -> list[Any]:
        """The backend's encodings of texts (or pairs), checked and truncated as ``encode`` documents."""
        for name, seq in (("texts", texts), ("pairs", pairs or [])):
            for i, t in enumerate(seq):
                if not isinstance(t, str):
                    raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        self._check_max_length(max_length, pairs is not None)
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        with self._lock:
            self._tok.enable_truncation(max_length, strategy="longest_first")
            try:
                return self._tok.encode_batch(inputs)
            finally:
                self._tok.no_truncation()

    def encode_offsets(self, texts: list[str], max_length: int = 512) -> OffsetBatch:
        """``encode(texts)`` plus each token's character offsets and special-token mask, from the ``tokenizers``
        backend as transformers' ``return_offsets_mapping=True, return_special_tokens_mask=True`` give them."""
        encs = self._encodings(texts, None, max_length)
        return OffsetBatch([e.ids for e in encs], [e.type_ids for e in encs], sum(1 for e in encs if e.overflowing),
                           [list(e.offsets) for e in encs], [e.special_tokens_mask for e in encs])

    def encode_words(self, words: list[list[str]], max_length: int = 512) -> tuple[Batch, list[list[int | None]]]:
        """Tokenize pre-split words (NER); also return, per token, the index of its word (None for specials).

        A word past the truncation point, or one that normalizes to nothing, has no tokens. Byte-level BPE
        tokenizers (RoBERTa, ModernBERT) see each word with a space before it, as transformers' tokenizer does when
        loaded with ``add_prefix_space=True`` (which it requires for pre-split words): a word is then tokenized as
        it would be inside a sentence.
        """
        for i, w in enumerate(words):
            if not isinstance(w, list) or not all(isinstance(x, str) for x in w):
                raise TypeError(f"words[{i}] must be a list of str")
        self._check_max_length(max_length, False)
        with self._lock:
            if self._words_tok is None:
                self._words_tok = _with_prefix_space(self._tok)
            self._words_tok.enable_truncation(max_length, strategy="longest_first")
            try:
                encs = self._words_tok.encode_batch(words, is_pretokenized=True)
            finally:
                self._words_tok.no_truncation()
        n_trunc = sum(1 for e in encs if e.overflowing)
        return Batch([e.ids for e in encs], [e.type_ids for e in encs], n_trunc), [e.word_ids for e in encs]

    def encode_spans(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 512
                     ) -> tuple[Batch, list[list[tuple[int, int, int | None]]]]:
        """``encode``, plus where each token came from: ``(start, end, sequence)`` character offsets into text
        (``sequence`` 0) or its pair (1); ``sequence`` None for the tokens the template adds ([CLS], [SEP], ...)."""
        encs = self._encodings(texts, pairs, max_length)
        batch = Batch([e.ids for e in encs], [e.type_ids for e in encs], sum(1 for e in encs if e.overflowing))
        spans = [[(a, b, s) for (a, b), s in zip(e.offsets, e.sequence_ids, strict=True)] for e in encs]
        return batch, spans

    def encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text without special tokens and untruncated: pretraining packs documents itself."""
        with self._lock:  # encode() toggles truncation; wait for it to switch it off again
            encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    # ---- vocabulary ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included: the embedding table must be at least this."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Token strings back to text through the tokenizer's decoder (WordPiece joins ``##`` pieces, byte-level
        BPE turns ``Ġ`` into a space), as transformers' fast tokenizers do; space-joined without a decoder."""
        decoder = self._tok.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    @property
    def marks_subwords(self) -> bool:
        """Whether the model marks pieces that continue a word (WordPiece's ``##``): transformers' token-
        classification pipeline then tells sub-words by their length, else by the text around them."""
        return bool(getattr(self._tok.model, "continuing_subword_prefix", None))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def continuation_ids(self) -> list[int]:
        """Ids of the pieces that continue the previous piece's word (whole-word masking): WordPiece's ``##``
        pieces; for byte-level BPE and SentencePiece, the pieces without the word-start marker (``Ġ`` / ``▁``).
        Special and added tokens never continue a word."""
        added = set(self._tok.get_added_tokens_decoder())
        if isinstance(self._tok.model, models.WordPiece):
            prefix = self._tok.model.continuing_subword_prefix or "##"
            return [i for t, i in self.get_vocab().items() if t.startswith(prefix) and i not in added]
        marker = _word_start_marker(_component(self._tok.pre_tokenizer))
        if marker is None:
            return []
        return [i for t, i in self.get_vocab().items() if not t.startswith(marker) and i not in added]

    def fingerprint(self) -> str:
        """sha256 of the whole tokenizer (vocabulary, normalizer, ...): tells caches built with it apart."""
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()

    # ---- saving ----------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (and vocab.txt for WordPiece,
        which transformers' BERT classes also read), so that transformers' AutoTokenizer loads the directory to the
        same ids."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "tokenizer.json") as tmp:
            self._tok.save(str(tmp))
        config = {k: v for k, v in self.config.items()
                  if k not in ("tokenizer_file", "name_or_path", "special_tokens_map_file", "vocab_file",
                               "merges_file")}
        if self.tokenizer_class and "tokenizer_class" not in config:
            config["tokenizer_class"] = self.tokenizer_class
        named = {f"{r}_token": t for r, t in self.special_tokens.items() if t is not None}
        for key, token in named.items():
            config.setdefault(key, token)
        if self.additional_special_tokens and not {"additional_special_tokens", "extra_special_tokens"} & set(config):
            config["additional_special_tokens"] = list(self.additional_special_tokens)
        atomic_write_text(d / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        special_map = {k: v for k, v in config.items() if k in named or k in ("additional_special_tokens",
                                                                              "extra_special_tokens")}
        atomic_write_text(d / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
        if isinstance(self._tok.model, models.WordPiece):
            vocab = sorted(self._tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            atomic_write_text(d / "vocab.txt", "".join(t + "\n" for t, _ in vocab))


WordPieceTokenizer = Tokenizer  # deprecated alias (bertkit <= 0.x loaded BERT WordPiece only); use Tokenizer


# ---- templates -----------------------------------------------------------------------------------------------
def parse_template(post: dict | None, where: object = "tokenizer") -> tuple[list[TemplateItem], list[TemplateItem]]:
    """The (single, pair) templates of a tokenizer.json post-processor, as lists of
    ``("special", ids, type_id)`` and ``("sequence", 0 | 1, type_id)`` items."""
    if post is None or post.get("type") == "ByteLevel":  # no special tokens; a pair's second text gets type id 1
        return [("sequence", 0, 0)], [("sequence", 0, 0), ("sequence", 1, 1)]
    kind = post.get("type")
    if kind == "Sequence":
        adding = [p for p in post.get("processors", []) if p.get("type") != "ByteLevel"]
        if len(adding) > 1:
            raise CheckpointError(f"{where}: a post-processor Sequence with {len(adding)} template steps "
                                  f"({', '.join(p.get('type', '?') for p in adding)}); expected at most one")
        return parse_template(adding[0] if adding else None, where)
    if kind == "TemplateProcessing":
        specials = post.get("special_tokens", {})

        def items(template: list[dict]) -> list[TemplateItem]:
            out: list[TemplateItem] = []
            for piece in template:
                if "SpecialToken" in piece:
                    name = piece["SpecialToken"]["id"]
                    if name not in specials:
                        raise CheckpointError(f"{where}: the post-processor's template uses {name!r}, which its "
                                              "special_tokens do not define")
                    out.append(("special", tuple(specials[name]["ids"]), piece["SpecialToken"]["type_id"]))
                else:
                    seq = piece["Sequence"]
                    out.append(("sequence", 0 if seq["id"] == "A" else 1, seq["type_id"]))
            return out

        return items(post["single"]), items(post["pair"])
    if kind in ("RobertaProcessing", "BertProcessing"):
        (_, cls), (_, sep) = post["cls"], post["sep"]
        single = [("special", (cls,), 0), ("sequence", 0, 0), ("special", (sep,), 0)]
        if kind == "RobertaProcessing":  # <s> A </s></s> B </s>, every type id 0
            return single, [*single, ("special", (sep,), 0), ("sequence", 1, 0), ("special", (sep,), 0)]
        return single, [*single, ("sequence", 1, 1), ("special", (sep,), 1)]
    raise CheckpointError(f"{where}: post-processor {kind!r} is not supported; expected TemplateProcessing, "
                          "RobertaProcessing, BertProcessing or ByteLevel")




def _component(part: Any) -> dict | None:
    """A tokenizer component (normalizer, pre-tokenizer, post-processor) as its tokenizer.json entry."""
    return None if part is None else json.loads(part.__getstate__())



def _model_unk_id(backend: Backend) -> int | None:
    model = backend.model
    if isinstance(model, models.Unigram):  # its unk_id is not exposed as an attribute
        return json.loads(model.__getstate__()).get("unk_id")
    unk = getattr(model, "unk_token", None)
    return backend.token_to_id(unk) if isinstance(unk, str) else None


def _walk(node: Any):
    """Every dict inside a tokenizer.json component (Sequences nest)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _word_start_marker(pre_tokenizer: dict | None) -> str | None:
    for node in _walk(pre_tokenizer):
        if node.get("type") == "ByteLevel":
            return "\u0120"  # 'Ġ': the byte-level alphabet's space
        if node.get("type") == "Metaspace":
            return node.get("replacement", "\u2581")
    return None


def _with_prefix_space(backend: Backend) -> Backend:
    """The tokenizer itself, or for a byte-level pre-tokenizer without ``add_prefix_space`` a copy with it on (what
    transformers builds with ``add_prefix_space=True``)."""
    spec = json.loads(backend.to_str())
    levels = [n for n in _walk(spec.get("pre_tokenizer")) if n.get("type") == "ByteLevel"]
    if not any(not n.get("add_prefix_space", False) for n in levels):
        return backend
    for n in levels:
        n["add_prefix_space"] = True
    return Backend.from_str(json.dumps(spec))
