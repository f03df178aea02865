"""Reading a model directory's tokenizer files into a ``tokenizers`` backend, as transformers' classes read them.

``read_tokenizer_files(directory)`` returns the backend plus what ``tokenizer_config.json`` /
``special_tokens_map.json`` say (special tokens by role, their AddedToken settings, the tokenizer class), from:

``tokenizer.json``               any model type, used as is
``vocab.json`` + ``merges.txt``  byte-level BPE built as transformers' ``RobertaTokenizer`` builds it
``vocab.txt``                    WordPiece built as transformers' ``BertTokenizer`` (or ``MPNetTokenizer``) builds it
``spm.model`` / ``sentencepiece.bpe.model``  a SentencePiece Unigram model of DeBERTa-v2/v3, XLM-R or CamemBERT
                                 (e.g. microsoft/deberta-v3-base ships no tokenizer.json), converted as transformers'
                                 class for the family converts it, with ``tokenizers`` alone (no sentencepiece)

Nothing about a family is hard-coded except what transformers itself assumes when a file is silent (its classes'
default special tokens and templates, below). ``data/tokenizer.py`` builds the ``Tokenizer`` on top.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from bertkit.errors import CheckpointError

ROLES = ("cls", "sep", "pad", "mask", "unk", "bos", "eos")
SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spm.model", "spiece.model", "tokenizer.model")
SENTENCEPIECE_CLASSES = ("DebertaV2Tokenizer", "XLMRobertaTokenizer", "CamembertTokenizer")  # converted here

# What transformers' tokenizer classes assume for a special token the files do not name.
_BERT_STYLE = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"}
_ROBERTA_STYLE = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>", "unk": "<unk>", "bos": "<s>",
                  "eos": "</s>"}
CLASS_DEFAULTS: dict[str, dict[str, str]] = {
    "BertTokenizer": _BERT_STYLE, "DistilBertTokenizer": _BERT_STYLE, "ElectraTokenizer": _BERT_STYLE,
    "DebertaV2Tokenizer": {**_BERT_STYLE, "bos": "[CLS]", "eos": "[SEP]"},
    "RobertaTokenizer": _ROBERTA_STYLE, "XLMRobertaTokenizer": _ROBERTA_STYLE, "CamembertTokenizer": _ROBERTA_STYLE,
    "MPNetTokenizer": {**_ROBERTA_STYLE, "unk": "[UNK]"},
}
# Special tokens a class adds when tokenizer_config.json names no additional_special_tokens.
CLASS_EXTRA_SPECIALS = {"CamembertTokenizer": ("<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED")}
# The class transformers' AutoTokenizer picks for a config.json model_type when tokenizer_config.json names none.
MODEL_TYPE_CLASSES = {
    "bert": "BertTokenizer", "distilbert": "DistilBertTokenizer", "electra": "ElectraTokenizer",
    "roberta": "RobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer", "camembert": "CamembertTokenizer",
    "deberta-v2": "DebertaV2Tokenizer", "mpnet": "MPNetTokenizer",
}
# Legacy files get the template of their class: <s> A </s></s> B </s> for these, [CLS] A [SEP] B [SEP] otherwise.
_PAIR_DOUBLE_SEP = {"RobertaTokenizer", "XLMRobertaTokenizer", "CamembertTokenizer", "MPNetTokenizer",
                    "BartTokenizer", "LongformerTokenizer"}



@dataclass
class TokenizerFiles:
    """What a directory's tokenizer files hold: the backend, special tokens by role (None where the model has none),
    the tokenizer config, transformers' class name, and additional special tokens."""

    backend: Backend
    special_tokens: dict[str, str | None]
    config: dict
    tokenizer_class: str | None
    additional_special_tokens: list[str]


def read_tokenizer_files(directory: str | Path) -> TokenizerFiles:
    """The tokenizer files of ``directory`` (see the module docstring for the order); a CheckpointError naming the
    file when none is there or one cannot be read."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such directory; expected a model or tokenizer directory")
    config = _read_json(d / "tokenizer_config.json")
    special_map = _read_json(d / "special_tokens_map.json")
    cls_name = _tokenizer_class(config, _read_json(d / "config.json"))
    # transformers reads special_tokens_map.json only for configs written before added_tokens_decoder existed
    named = {**config, **({} if "added_tokens_decoder" in config else special_map)}
    props = _token_properties(named)
    defaults = CLASS_DEFAULTS.get(cls_name or "", {})
    special_tokens = {r: _content(named[f"{r}_token"]) if f"{r}_token" in named else defaults.get(r)
                      for r in ROLES}
    extra = [_content(t) for key in ("additional_special_tokens", "extra_special_tokens")
             for t in (named.get(key) or []) if isinstance(named.get(key), list)]
    if "additional_special_tokens" not in named and "extra_special_tokens" not in named:
        extra = list(CLASS_EXTRA_SPECIALS.get(cls_name or "", ()))

    if (d / "tokenizer.json").is_file():
        try:
            backend = Backend.from_file(str(d / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise CheckpointError(f"{d / 'tokenizer.json'}: cannot load tokenizer ({e})") from None
    elif (d / "vocab.json").is_file() or (d / "merges.txt").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (d / name).is_file():
                raise CheckpointError(f"{d}: has {'merges.txt' if name == 'vocab.json' else 'vocab.json'} but "
                                      f"no {name}; a byte-level BPE tokenizer needs both (or a tokenizer.json)")
        cls_name = cls_name or "RobertaTokenizer"
        special_tokens = {**CLASS_DEFAULTS.get(cls_name, _ROBERTA_STYLE), **{
            r: t for r, t in special_tokens.items() if f"{r}_token" in named}}
        backend = _byte_level_bpe(d, config, special_tokens, props, cls_name)
    elif (d / "vocab.txt").is_file():
        cls_name = cls_name or "BertTokenizer"
        special_tokens = {**CLASS_DEFAULTS.get(cls_name, _BERT_STYLE), **{
            r: t for r, t in special_tokens.items() if f"{r}_token" in named}}
        backend = _wordpiece(d, config, special_tokens, props, cls_name)
    else:
        spm = [name for name in SENTENCEPIECE_FILES if (d / name).is_file()]
        if spm and cls_name in SENTENCEPIECE_CLASSES:
            # transformers takes the model's control pieces as the additional special tokens, whatever the
            # config names
            backend, extra = _sentencepiece(d / spm[0], config, special_tokens, props, cls_name)
        elif spm:
            raise CheckpointError(
                f"{d / spm[0]}: a SentencePiece model without tokenizer.json, of tokenizer class "
                f"{cls_name or '(none named)'}; bertkit converts those of {', '.join(SENTENCEPIECE_CLASSES)} only. "
                f"Write a tokenizer.json with transformers (and the sentencepiece package): python -c \"from "
                f"transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')\"")
        else:
            raise CheckpointError(f"{d}: no tokenizer found; looked for tokenizer.json, vocab.json + merges.txt, "
                                  f"vocab.txt and a SentencePiece model ({', '.join(SENTENCEPIECE_FILES)})")
    return TokenizerFiles(backend, special_tokens, config, cls_name, [t for t in extra if t is not None])


# ---- reading the files ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _tokenizer_class(config: dict, model_config: dict) -> str | None:
    """transformers' tokenizer class for the directory, without the Fast suffix (v5 merged the two)."""
    name = config.get("tokenizer_class") or model_config.get("tokenizer_class") \
        or MODEL_TYPE_CLASSES.get(model_config.get("model_type", ""))
    return name.removesuffix("Fast") if isinstance(name, str) else None


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _token_properties(named: dict) -> dict[str, dict]:
    """AddedToken settings (lstrip, normalized, ...) of the tokens the config describes, by token text."""
    props: dict[str, dict] = {}
    for entry in (named.get("added_tokens_decoder") or {}).values():
        if isinstance(entry, dict) and "content" in entry:
            props[entry["content"]] = entry
    for key, value in named.items():
        if key.endswith("_token") and isinstance(value, dict) and "content" in value:
            props.setdefault(value["content"], value)
    return props


def _added_token(content: str, props: dict[str, dict], lstrip: bool = False) -> AddedToken:
    p = props.get(content, {})
    return AddedToken(content, single_word=bool(p.get("single_word", False)), lstrip=bool(p.get("lstrip", lstrip)),
                      rstrip=bool(p.get("rstrip", False)), normalized=bool(p.get("normalized", False)), special=True)


def _special_added_tokens(special_tokens: dict[str, str | None], props: dict[str, dict],
                          mask_lstrip: bool = False) -> list[AddedToken]:
    tokens = dict.fromkeys(t for t in special_tokens.values() if t is not None)
    return [_added_token(t, props, lstrip=mask_lstrip and t == special_tokens.get("mask")) for t in tokens]


def _legacy_template(backend: Backend, special_tokens: dict[str, str | None], cls_name: str,
                     vocab_file: Path) -> processors.PostProcessor:
    ids = {}
    for role in ("cls", "sep"):
        token = special_tokens.get(role)
        i = None if token is None else backend.token_to_id(token)
        if i is None:
            raise CheckpointError(f"{vocab_file}: the {role} token {token!r} is not in the vocabulary")
        ids[role] = (token, i)
    if cls_name in _PAIR_DOUBLE_SEP:
        return processors.RobertaProcessing(ids["sep"], ids["cls"], trim_offsets=True, add_prefix_space=False)
    (c, ci), (s, si) = ids["cls"], ids["sep"]
    return processors.TemplateProcessing(single=f"{c}:0 $A:0 {s}:0", pair=f"{c}:0 $A:0 {s}:0 $B:1 {s}:1",
                                         special_tokens=[(c, ci), (s, si)])


def _wordpiece(d: Path, config: dict, special_tokens: dict[str, str | None], props: dict[str, dict],
               cls_name: str) -> Backend:
    """vocab.txt as transformers' BertTokenizer / MPNetTokenizer builds it."""
    path = d / "vocab.txt"
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {token: i for i, token in enumerate(lines)}  # a repeated line keeps its last id, as transformers does
    unk = special_tokens.get("unk")
    if unk is None or unk not in vocab:
        raise CheckpointError(f"{path}: the unknown token {unk!r} is not in the vocabulary")
    backend = Backend(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    lowercase = config.get("do_lower_case", True)
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # MPNet's mask token takes the space before it (transformers' MPNetTokenizer forces lstrip)
    backend.add_special_tokens(_special_added_tokens(special_tokens, props, mask_lstrip=cls_name == "MPNetTokenizer"))
    backend.post_processor = _legacy_template(backend, special_tokens, cls_name, path)
    return backend


def _byte_level_bpe(d: Path, config: dict, special_tokens: dict[str, str | None], props: dict[str, dict],
                    cls_name: str) -> Backend:
    """vocab.json + merges.txt as transformers' RobertaTokenizer builds them."""
    vocab = _read_json(d / "vocab.json")
    try:
        lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / 'merges.txt'}: cannot read ({e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"{d / 'merges.txt'}, line {n}: expected two space-separated tokens, got {line!r}")
        merges.append((parts[0], parts[1]))
    try:
        backend = Backend(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False))
    except Exception as e:
        raise CheckpointError(f"{d / 'vocab.json'}: cannot build a BPE tokenizer with {d / 'merges.txt'} ({e})") \
            from None
    prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_special_added_tokens(special_tokens, props))
    template = _legacy_template(backend, special_tokens, cls_name, d / "vocab.json")
    if isinstance(template, processors.RobertaProcessing):
        template = processors.RobertaProcessing((special_tokens["sep"], backend.token_to_id(special_tokens["sep"])),
                                                (special_tokens["cls"], backend.token_to_id(special_tokens["cls"])),
                                                trim_offsets=bool(config.get("trim_offsets", True)),
                                                add_prefix_space=prefix_space)
    backend.post_processor = template
    return backend

# ---- SentencePiece models -------------------------------------------------------------------------------------
@dataclass
class SentencePieceModel:
    """What a SentencePiece ``.model`` file (a ModelProto) holds that a tokenizers conversion needs."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type): 1 normal, 2 unknown, 3 control, 4 user-defined
    model_type: int  # 1 Unigram, 2 BPE, 3 word, 4 char
    unk_id: int
    precompiled_charsmap: bytes


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _proto_fields(buf: bytes):
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield field, value


def read_sentencepiece(path: Path) -> SentencePieceModel:
    """Parse a SentencePiece model file without the sentencepiece package (the proto is small and stable)."""
    try:
        buf = path.read_bytes()
        pieces, model_type, unk_id, charsmap = [], 1, 0, b""
        for field, value in _proto_fields(buf):
            if field == 1:  # SentencePiece piece = 1 (string), score = 2 (float), type = 3 (enum, NORMAL if absent)
                piece, score, kind = "", 0.0, 1
                for f, v in _proto_fields(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                pieces.append((piece, score, kind))
            elif field == 2:  # TrainerSpec: model_type = 3, unk_id = 40
                for f, v in _proto_fields(value):
                    if f == 3:
                        model_type = v
                    elif f == 40:
                        unk_id = v
            elif field == 3:  # NormalizerSpec: precompiled_charsmap = 2
                for f, v in _proto_fields(value):
                    if f == 2:
                        charsmap = v
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(f"{path}: cannot read SentencePiece model ({e})") from None
    if not pieces:
        raise CheckpointError(f"{path}: not a SentencePiece model (no pieces)")
    return SentencePieceModel(pieces, model_type, unk_id, charsmap)


def _sentencepiece(path: Path, config: dict, special_tokens: dict[str, str | None], props: dict[str, dict],
                   cls_name: str) -> tuple[Backend, list[str]]:
    """A SentencePiece Unigram model as transformers 5's DebertaV2Tokenizer, XLMRobertaTokenizer or
    CamembertTokenizer builds it from the same file: their vocabulary layouts (fairseq's four specials in front for
    XLM-R and CamemBERT), normalizer (the model's precompiled character map), pre-tokenizer and template. Returns the
    backend and the model's control pieces, which transformers treats as special tokens."""
    spm = read_sentencepiece(path)
    if spm.model_type != 1:
        raise CheckpointError(f"{path}: a SentencePiece model of type {spm.model_type}; only Unigram models (type 1) "
                              "are converted here. Write a tokenizer.json with transformers instead")
    vocab = [(p, s) for p, s, _ in spm.pieces]
    controls = [p for p, _, kind in spm.pieces if kind == 3]
    tok = {r: special_tokens.get(r) or d for r, d in _ROBERTA_STYLE.items()}
    prefix = bool(config.get("add_prefix_space", True))
    if cls_name == "XLMRobertaTokenizer":
        vocab = [(tok["bos"], 0.0), (tok["pad"], 0.0), (tok["eos"], 0.0), (tok["unk"], 0.0), *vocab[3:],
                 (tok["mask"], 0.0)]
        unk_id = 3
    elif cls_name == "CamembertTokenizer":
        vocab = [("<s>NOTUSED", 0.0), (tok["pad"], 0.0), ("</s>NOTUSED", 0.0), (tok["unk"], 0.0),
                 ("<unk>NOTUSED", -100.0), *vocab[1:], (tok["mask"], 0.0)]
        unk_id = next(i for i, (p, _) in enumerate(vocab) if p == tok["unk"])
    else:  # DebertaV2Tokenizer: the pieces as they are; [MASK] is appended as an added token
        unk = special_tokens.get("unk") or "[UNK]"
        unk_id = vocab.index((unk, 0.0)) if (unk, 0.0) in vocab else spm.unk_id
    backend = Backend(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    charsmap = [normalizers.Precompiled(spm.precompiled_charsmap)] if spm.precompiled_charsmap else []
    scheme = "always" if prefix else ("first" if cls_name == "DebertaV2Tokenizer" else "never")
    if cls_name == "DebertaV2Tokenizer":
        lower = [normalizers.Lowercase()] if config.get("do_lower_case", False) else []
        rest = ([normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), " ")] if charsmap else
                [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                 normalizers.Strip(left=False, right=True)])
        backend.normalizer = normalizers.Sequence([*lower, *charsmap, *rest])
        punct = [pre_tokenizers.Punctuation(behavior="isolated")] if config.get("split_by_punct", False) else []
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [*punct, pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)])
    else:
        if charsmap:
            backend.normalizer = charsmap[0]
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)])
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    # CamemBERT's mask token takes the space before it (transformers' CamembertTokenizer forces lstrip)
    added = _special_added_tokens(special_tokens, props, mask_lstrip=cls_name == "CamembertTokenizer")
    backend.add_special_tokens(added)  # a named token the vocabulary lacks ([MASK] of DeBERTa-v3) goes last
    cls, sep = special_tokens.get("cls"), special_tokens.get("sep")
    if cls_name == "DebertaV2Tokenizer":
        for name in (cls, sep):
            if name is None or backend.token_to_id(name) is None:
                raise CheckpointError(f"{path}: the special token {name!r} is not in the SentencePiece vocabulary")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    else:
        bos, eos = tok["bos"], tok["eos"]
        backend.post_processor = processors.TemplateProcessing(
            single=[bos, "$A", eos], pair=[bos, "$A", eos, eos, "$B", eos],
            special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))])
    # tokenizer.json's reader rounds some scores by an ulp: go through it once, so that the tokenizer (and its
    # fingerprint) is the same as after save() and a reload
    return Backend.from_str(backend.to_str()), controls

