"""Small tokenizers of every encoder family, trained here with HF ``tokenizers``, saved as the family's checkpoints
ship them, so that ``transformers.AutoTokenizer`` loads each with the family's own tokenizer class.

``make_tokenizer(family, directory)`` writes tokenizer.json, tokenizer_config.json and special_tokens_map.json.
The layouts follow the real checkpoints (bert-base-uncased, roberta-base, xlm-roberta-base, camembert-base,
deberta-v3-base, all-mpnet-base-v2, ModernBERT-base): the same special tokens at the same kind of ids, the same
normalizer, pre-tokenizer, post-processor (pair template) and decoder as transformers 5's class for the family
builds. What a tokenizer trained here cannot have: the SentencePiece families' ``Precompiled`` normalizer (its
character map comes from a SentencePiece model), so xlm-roberta, camembert and deberta-v2 get the normalizer
transformers 5 builds when a checkpoint has no character map.

One byte-level BPE model of ``vocab_size`` learned pieces is trained (tokenizers' BpeTrainer, deterministic) on a
fixed English corpus, the Python docs' reST sources when installed; the WordPiece and Unigram vocabularies are
derived from it, as tokenizers' WordPiece and Unigram trainers keep different pieces from run to run. So every run
writes the same files, in under a second for all families. Each family adds its own special tokens (BERT's layout
104 with its [unusedN] rows, the others 2 to 8), so a tokenizer has about ``vocab_size`` tokens.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FAMILIES = ("bert", "distilbert", "electra", "roberta", "xlm-roberta", "camembert", "deberta-v2", "mpnet",
            "modernbert")
HUGE_MAX_LENGTH = 1000000000000000019884624838656  # transformers' "no limit" sentinel, int(1e30)

PYTHON_DOCS_DIRS = [
    Path("/usr/share/doc/python3.11/html/_sources"),
    Path(sys.prefix) / "share/python3.11-doc/usr/share/doc/python3.11/html/_sources",
    Path(__file__).resolve().parents[2] / ".venv/share/python3.11-doc/usr/share/doc/python3.11/html/_sources",
]
CORPUS_CHARS = 60_000  # enough for a 1000-token vocabulary; keeps the Unigram trainer near half a second
EXTRA_SENTENCES = [  # characters beyond ASCII, so that the vocabularies know some of them
    "Café naïve Über façade résumé coöperate jalapeño Ærøskøbing", "Straße größer Ölfeld", "中文字符 日本語 한국어",
    "emoji 🙂 🚀 and symbols ™ © ° ± µ", "Ünïcödé àccents, ÀÉÎÕÜ and œuvre",
]


@functools.cache
def corpus() -> tuple[str, ...]:
    """Paragraphs of English text, whitespace collapsed: the Python docs when installed, else made-up sentences."""
    texts: list[str] = []
    total = 0
    for d in PYTHON_DOCS_DIRS:
        if d.is_dir():
            for f in sorted(d.rglob("*.txt")):
                for para in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
                    p = " ".join(para.split())
                    if p:
                        texts.append(p)
                        total += len(p)
                if total > CORPUS_CHARS:
                    break
            break
    if not texts:
        subjects = ["the parser", "a list", "this function", "every module", "the interpreter", "an object",
                    "the new class", "each thread", "the dictionary", "a generator"]
        verbs = ["returns", "raises", "stores", "reads", "creates", "yields", "copies", "imports", "sorts", "calls"]
        objects = ["a value", "the error", "its arguments", "two strings", "the file", "an iterator", "the result",
                   "keyword arguments", "a tuple", "the attribute"]
        texts = [f"{s.capitalize()} {v} {o} when {s2} {v2} {o2}."
                 for i, (s, v, o) in enumerate((s, v, o) for s in subjects for v in verbs for o in objects)
                 for s2, v2, o2 in [(subjects[i % 7], verbs[i % 9], objects[i % 4])]]
    return (*texts, *EXTRA_SENTENCES)


# ---- the three trained models, each shared by the families of its type -----------------------------------------
@functools.cache
def _wordpiece_pieces(n: int) -> tuple[str, ...]:
    """Uncased WordPiece tokens (no specials), in train_wordpiece's order (words, then ``##`` pieces).

    tokenizers' WordPiece trainer keeps a different set of tokens from run to run, so the tokens are the byte-level
    BPE vocabulary's, BERT-normalized: a piece after a space starts a word, any other continues one; plus every
    character of the corpus both ways. The same tokenizer in every run."""
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words, continuations = set(), set()
    for text in _bpe_texts(n):
        parts = pre.pre_tokenize_str(norm.normalize_str(text))
        if len(parts) == 1:  # not split by BERT's pre-tokenizer (punctuation, spaces): a possible piece
            (words if text.startswith(" ") else continuations).add(parts[0][0])
    for c in set(norm.normalize_str(" ".join(corpus()))) - {" "}:
        words.add(c)
        if len(pre.pre_tokenize_str(f"a{c}")) == 1:  # punctuation never continues a word
            continuations.add(c)
    return (*sorted(words), *sorted("##" + c for c in continuations))


@functools.cache
def _bpe(n: int) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Byte-level BPE: (vocab without specials, numbered from 0; merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=n, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return dict(sorted(model["vocab"].items(), key=lambda kv: kv[1])), merges


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (``Ġ`` -> 0x20, ...)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _bpe_texts(n: int) -> list[str]:
    """The byte-level BPE vocabulary as text: the tokens that are whole characters (``Ġ`` back to a space)."""
    decode = _byte_decoder()
    out = []
    for token in _bpe(n)[0]:
        try:
            out.append(bytes(decode[c] for c in token).decode("utf-8"))
        except UnicodeDecodeError:
            continue  # part of a multi-byte character
    return out


@functools.cache
def _unigram_pieces(n: int) -> tuple[tuple[str, float], ...]:
    """Unigram pieces with their log-probabilities (no specials), SentencePiece-style (``▁`` starts a word).

    tokenizers' Unigram trainer keeps a different set of pieces from run to run (its hash maps), so the pieces are
    the byte-level BPE vocabulary's (those that are whole characters, spaces as ``▁``) plus every character of the
    corpus, scored by their frequency in the corpus: the same tokenizer in every run.
    """
    pieces = {t.replace(" ", "\u2581") for t in _bpe_texts(n)}
    text = "".join("\u2581" + "\u2581".join(p.split()) for p in corpus())
    pieces |= set(text)
    counts = {p: text.count(p) + 1 for p in sorted(pieces)}
    total = sum(counts.values())
    scored = {p: round(math.log(c / total), 4) for p, c in counts.items()}
    return tuple(sorted(scored.items(), key=lambda ps: (-ps[1], ps[0])))


# ---- the families ------------------------------------------------------------------------------------------------
def _added(content: str, special: bool = True, lstrip: bool = False, normalized: bool = False) -> AddedToken:
    return AddedToken(content, single_word=False, lstrip=lstrip, rstrip=False, normalized=normalized, special=special)


def _bert_layout(n: int) -> list[str]:
    """bert-base-uncased's layout: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, pieces."""
    unused = [f"[unused{i}]" for i in range(99)]
    return ["[PAD]", *unused, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_wordpiece_pieces(n)]


def _bert_family(vocab_size: int, cls_name: str) -> tuple[Tokenizer, dict, list[AddedToken]]:
    vocab = {t: i for i, t in enumerate(_bert_layout(vocab_size))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    added = [_added(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    config = {"tokenizer_class": cls_name, "do_lower_case": True, "strip_accents": None,
              "tokenize_chinese_chars": True, "model_max_length": 512, "clean_up_tokenization_spaces": True,
              "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
              "unk_token": "[UNK]"}
    return tok, config, added


def _mpnet(vocab_size: int) -> tuple[Tokenizer, dict, list[AddedToken]]:
    """all-mpnet-base-v2: BERT's uncased WordPiece vocabulary behind <s> <pad> </s> <unk>, <mask> last;
    RoBERTa's <s> A </s></s> B </s> template; [UNK] is the unknown token."""
    layout = ["<s>", "<pad>", "</s>", "<unk>", *_bert_layout(vocab_size), "<mask>"]
    vocab = {t: i for i, t in enumerate(layout)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.WordPiece(prefix="##")
    added = [_added(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "[UNK]")] + [_added("<mask>", lstrip=True)]
    config = {"tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "strip_accents": None,
              "tokenize_chinese_chars": True, "model_max_length": 512, "clean_up_tokenization_spaces": True,
              "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
              "mask_token": "<mask>", "unk_token": "[UNK]"}
    return tok, config, added


def _byte_level_bpe(vocab: dict[str, int], merges: tuple[tuple[str, str], ...]) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab, list(merges), dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _roberta(vocab_size: int) -> tuple[Tokenizer, dict, list[AddedToken]]:
    """roberta-base: byte-level BPE, <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last (in the BPE vocabulary too)."""
    learned, merges = _bpe(vocab_size)
    layout = ["<s>", "<pad>", "</s>", "<unk>", *learned, "<mask>"]
    vocab = {t: i for i, t in enumerate(layout)}
    tok = _byte_level_bpe(vocab, merges)
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      trim_offsets=True, add_prefix_space=False)
    added = [_added(t, normalized=True) for t in ("<s>", "<pad>", "</s>", "<unk>")] + [_added("<mask>", lstrip=True)]
    config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True,
              "errors": "replace", "model_max_length": 512, "clean_up_tokenization_spaces": True,
              "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
              "mask_token": "<mask>", "unk_token": "<unk>"}
    return tok, config, added


def _modernbert(vocab_size: int) -> tuple[Tokenizer, dict, list[AddedToken]]:
    """answerdotai/ModernBERT-base: OLMo's byte-level BPE (|||IP_ADDRESS|||=0, <|padding|>=1, <|endoftext|> last of
    the BPE vocabulary) with BERT's specials appended as added tokens: [UNK] [CLS] [SEP] [PAD] [MASK]; NFC
    normalization; [CLS] A [SEP] B [SEP] with every type id 0."""
    learned, merges = _bpe(vocab_size)
    layout = ["|||IP_ADDRESS|||", "<|padding|>", *learned, "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(layout)}
    tok = _byte_level_bpe(vocab, merges)
    tok.normalizer = normalizers.NFC()
    n = len(vocab)
    cls_id, sep_id = n + 1, n + 2  # [UNK] [CLS] [SEP] [PAD] [MASK] follow the BPE vocabulary in this order
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    added = [_added("|||IP_ADDRESS|||", special=False, normalized=True), _added("<|padding|>"),
             _added("<|endoftext|>"), *(_added(t) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]")),
             _added("[MASK]", lstrip=True)]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"],
              "model_max_length": 8192, "clean_up_tokenization_spaces": True, "cls_token": "[CLS]",
              "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}
    return tok, config, added


def _metaspace_unigram(vocab: list[tuple[str, float]], unk: str) -> Tokenizer:
    return Tokenizer(models.Unigram(vocab, unk_id=[p for p, _ in vocab].index(unk), byte_fallback=False))


def _xlm_roberta(vocab_size: int, camembert: bool = False) -> tuple[Tokenizer, dict, list[AddedToken]]:
    """xlm-roberta-base: fairseq's ids in front of the SentencePiece pieces (<s>=0 <pad>=1 </s>=2 <unk>=3), <mask>
    last. camembert-base: <s>NOTUSED=0 <pad>=1 </s>NOTUSED=2 <unk>=3 <unk>NOTUSED=4 <s>=5 </s>=6, <mask> last."""
    if camembert:
        head = [("<s>NOTUSED", 0.0), ("<pad>", 0.0), ("</s>NOTUSED", 0.0), ("<unk>", 0.0), ("<unk>NOTUSED", -100.0),
                ("<s>", 0.0), ("</s>", 0.0)]
    else:
        head = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = [*head, *_unigram_pieces(vocab_size), ("<mask>", 0.0)]
    ids = {p: i for i, (p, _) in enumerate(vocab)}
    tok = _metaspace_unigram(vocab, "<unk>")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    added = [_added(p) for p, _ in head] + [_added("<mask>", lstrip=True)]
    config = {"tokenizer_class": "CamembertTokenizer" if camembert else "XLMRobertaTokenizer",
              "model_max_length": 512, "clean_up_tokenization_spaces": True, "bos_token": "<s>", "eos_token": "</s>",
              "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "mask_token": "<mask>",
              "unk_token": "<unk>"}
    if camembert:
        config["additional_special_tokens"] = ["<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"]
    return tok, config, added


def _deberta_v2(vocab_size: int) -> tuple[Tokenizer, dict, list[AddedToken]]:
    """microsoft/deberta-v3-base: SentencePiece Unigram with [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, [MASK] last; no
    lower-casing; [CLS] A [SEP] B [SEP] with type ids 0/1; no model_max_length (the huge sentinel)."""
    head = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0)]
    vocab = [*head, *_unigram_pieces(vocab_size), ("[MASK]", 0.0)]
    ids = {p: i for i, (p, _) in enumerate(vocab)}
    tok = _metaspace_unigram(vocab, "[UNK]")
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                                           normalizers.Strip(left=False, right=True)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    added = [_added(p) for p, _ in head] + [_added("[MASK]")]
    config = {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False,
              "vocab_type": "spm", "model_max_length": HUGE_MAX_LENGTH, "bos_token": "[CLS]", "eos_token": "[SEP]",
              "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
              "unk_token": "[UNK]"}
    return tok, config, added


BUILDERS = {
    "bert": lambda n: _bert_family(n, "BertTokenizer"),
    "distilbert": lambda n: _bert_family(n, "DistilBertTokenizer"),
    "electra": lambda n: _bert_family(n, "ElectraTokenizer"),
    "roberta": _roberta,
    "xlm-roberta": _xlm_roberta,
    "camembert": lambda n: _xlm_roberta(n, camembert=True),
    "deberta-v2": _deberta_v2,
    "mpnet": _mpnet,
    "modernbert": _modernbert,
}


def _token_entry(t: AddedToken) -> dict:
    return {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
            "single_word": t.single_word, "special": t.special}


@functools.cache
def _files(family: str, vocab_size: int) -> dict[str, str]:
    """The three files' text for ``family``."""
    tok, config, added = BUILDERS[family](vocab_size)
    tok.add_tokens(added)  # each keeps its own special flag; tokens already in the vocabulary keep their ids
    by_content = {t.content: t for t in added}
    config["added_tokens_decoder"] = {str(tok.token_to_id(t.content)): _token_entry(t) for t in added}
    special_map = {}
    for key, value in config.items():
        if key.endswith("_token"):
            t = by_content[value]
            # real checkpoints spell a token that strips spaces as a whole AddedToken, the others as plain strings
            special_map[key] = {k: v for k, v in _token_entry(t).items() if k != "special"} if t.lstrip else value
    if "additional_special_tokens" in config:
        special_map["additional_special_tokens"] = config["additional_special_tokens"]
    return {"tokenizer.json": tok.to_str(pretty=True),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            "special_tokens_map.json": json.dumps(special_map, indent=2, ensure_ascii=False) + "\n"}


def make_tokenizer(family: str, directory: str | Path, vocab_size: int = 1000) -> Path:
    """Write a trained tokenizer of ``family`` (one of ``FAMILIES``) into ``directory``; returns it.

    The tokenizer has about ``vocab_size`` tokens: that many learned pieces (fewer when the corpus is too small)
    plus the family's special tokens. Read the exact size from the tokenizer.
    """
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small: the byte-level alphabet alone has 256 tokens")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, text in _files(family, vocab_size).items():
        (d / name).write_text(text, encoding="utf-8")
    return d


# ---- SentencePiece-only checkpoints (microsoft/deberta-v3-base ships spm.model and no tokenizer.json) -------------
SENTENCEPIECE_FAMILIES = ("xlm-roberta", "camembert", "deberta-v2")


@functools.cache
def _sentencepiece_model(family: str, vocab_size: int) -> bytes:
    import io

    import sentencepiece  # a test-only dependency: bertkit reads these files without it

    # deberta-v3's model has [PAD] [CLS] [SEP] [UNK] at 0..3; XLM-R's and CamemBERT's SentencePiece's defaults
    ids = (dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
                unk_piece="[UNK]") if family == "deberta-v2" else {})
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, num_threads=1, minloglevel=2, **ids)
    return out.getvalue()


def make_sentencepiece(family: str, directory: str | Path, vocab_size: int = 800) -> Path:
    """A checkpoint's tokenizer as the original SentencePiece releases ship it: the ``.model`` file and a
    tokenizer_config.json (deberta-v3-base's names only ``do_lower_case``; the class comes from config.json's
    model_type, also written). Needs the sentencepiece package (to train the model)."""
    if family not in SENTENCEPIECE_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(SENTENCEPIECE_FAMILIES)}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    name = "spm.model" if family == "deberta-v2" else "sentencepiece.bpe.model"
    (d / name).write_bytes(_sentencepiece_model("deberta-v2" if family == "deberta-v2" else "xlm-roberta",
                                                vocab_size))
    config = ({"do_lower_case": False, "vocab_type": "spm"} if family == "deberta-v2" else
              {"tokenizer_class": {"xlm-roberta": "XLMRobertaTokenizer", "camembert": "CamembertTokenizer"}[family],
               "model_max_length": 512})
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (d / "config.json").write_text(json.dumps({"model_type": family}, indent=2) + "\n", encoding="utf-8")
    return d
