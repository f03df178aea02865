"""A small synthetic SQuAD-style set built from BBC News articles, for tests and the smoke benchmark.

No extractive QA data set is on the package registries, so questions are made from the texts we have: in a sentence
of an article, a number (``76%``, ``$1.13bn``, ``464,000``) or a name (two or more capitalised words, not at the
sentence start) is the answer, and the question is the sentence with the answer replaced by a question word
(cloze style: "Quarterly profits at US media giant TimeWarner jumped how much to $1.13bn ...?"). The context is the
article's beginning (up to ``max_context_chars``, cut at a sentence end), so most contexts run over more than one
384-token window. Deterministic: the same articles give the same questions. It is synthetic: the questions copy
their sentence, so it measures span extraction and decoding, not reading comprehension.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bertkit.data.squad import QAData, QAExample, checked
from bertkit.utils.atomic import atomic_write_text

NUMBER = re.compile(r"(?<![\w.])[$£€]?\d[\d,.]*(?:%|bn|m|k)?(?![\w])")
NAME = re.compile(r"(?<=[a-z,;] )(?:[A-Z][a-z]+ )+[A-Z][a-z]+")
SENTENCE = re.compile(r"[^\s][^\n]*?[.!?](?=\s|$)")  # ends at . ! ? before a space: "$1.13bn" stays whole


def _context(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(". ", 0, max_chars)
    return text[:cut + 1] if cut > 0 else text[:max_chars]


def questions_from_text(text: str, max_context_chars: int = 2000, per_text: int = 2) -> list[tuple[str, str, int]]:
    """(question, answer, answer_start) pairs from one article's context, at most ``per_text``, in text order."""
    out: list[tuple[str, str, int]] = []
    for m in SENTENCE.finditer(text):
        sentence = m.group(0).strip()
        offset = text.index(sentence, m.start())
        for pattern, wh in ((NUMBER, "how much"), (NAME, "who")):
            a = pattern.search(sentence)
            if a is None or len(sentence.split()) < 6:
                continue
            answer = a.group(0).rstrip(".,")
            question = (sentence[:a.start()] + wh + sentence[a.start() + len(answer):]).rstrip(".!? ") + "?"
            out.append((question, answer, offset + a.start()))
            break
        if len(out) >= per_text:
            break
    return out


def synthetic_squad(texts: list[str], source: str = "bbc-news-qa", max_context_chars: int = 2000,
                    per_text: int = 2) -> QAData:
    """A SQuAD-style QAData from articles (see the module docstring); ids ``<article>-<n>``."""
    examples = []
    for i, text in enumerate(texts):
        context = _context(text, max_context_chars)
        for j, (q, a, start) in enumerate(questions_from_text(context, max_context_chars, per_text)):
            examples.append(QAExample(f"{i}-{j}", q, context, [a], [start], f"{source}: article {i}"))
    return checked(examples, source)


def bbc_news_qa(split: str = "train", limit: int | None = None, seed: int = 42, per_text: int = 2) -> QAData:
    """The synthetic set over a split of the built-in BBC News data set (``limit`` articles at most)."""
    from bertkit.data.tasks import load_builtin

    texts = load_builtin("bbc-news", seed=seed)[split].texts
    return synthetic_squad(texts[:limit] if limit else texts, f"bbc-news-qa/{split}", per_text=per_text)


def to_jsonl_rows(data: QAData) -> list[dict]:
    """Rows in Hugging Face datasets' squad layout (what ``read_squad`` reads back from .jsonl)."""
    return [{"id": e.id, "question": e.question, "context": e.context,
             "answers": {"text": list(e.answers), "answer_start": list(e.answer_starts)}} for e in data.examples]


def write_splits(directory: str | os.PathLike[str], limit: int | None = None, seed: int = 42) -> dict[str, Path]:
    """train/dev/test.jsonl of the synthetic set (``limit`` articles per split at most) in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "dev", "test"):
        rows = to_jsonl_rows(bbc_news_qa(split, limit, seed))
        out[split] = d / f"{split}.jsonl"
        atomic_write_text(out[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out
