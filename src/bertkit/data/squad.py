"""Extractive question-answering data: SQuAD v1/v2 JSON and JSONL files -> ``QAData``.

``.json``   the official SQuAD layout: ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
            "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`` (v2 adds ``is_impossible``; its
            unanswerable questions have no answers)
``.jsonl``  one question per line: ``id`` (optional; the line number when absent), ``question``, ``context`` and
            ``answers`` as Hugging Face datasets' squad (``{"text": [...], "answer_start": [...]}``) or a list of
            ``{"text", "answer_start"}``; ``answers`` absent or empty: no answer (v2), or unlabelled input for
            prediction

Every example keeps ``where`` (file and line, or file and JSON path) for messages. An answer whose text is not at its
``answer_start`` in the context is reported (one warning per example, naming file and line), and the example is
skipped and counted in ``QAData.n_skipped``; any other malformed record is an ``InputFileError``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertkit.data.text_files import json_object, read_lines
from bertkit.errors import InputFileError

log = logging.getLogger("bertkit")

QA_FORMATS = (".json", ".jsonl")


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # gold texts; [] = no answer (v2) or unlabelled
    answer_starts: list[int] = field(default_factory=list)  # character offset of each in the context
    where: str = ""  # "file, line n" or "file: data[i].paragraphs[j].qas[k]"

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass
class QAData:
    examples: list[QAExample]
    source: str
    n_skipped: int = 0  # examples dropped because an answer was not at its offset

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_impossible(self) -> bool:
        """Any question without an answer: v2-style data, decoded with a no-answer option."""
        return any(e.is_impossible for e in self.examples)


def _string(value: Any, name: str, path: Path, where: str, line: int | None) -> str:
    if not isinstance(value, str):
        got = "missing" if value is None else f"{type(value).__name__}, expected a string"
        raise InputFileError(path, f"{where}field {name!r} is {got}", line=line)
    return value


def _answers(value: Any, path: Path, where: str, line: int | None) -> tuple[list[str], list[int]]:
    """The answers field in either layout -> (texts, starts)."""
    if value is None:
        return [], []
    if isinstance(value, dict):  # datasets' squad: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text", []), value.get("answer_start", [])
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise InputFileError(path, f"{where}field 'answers' must have lists 'text' and 'answer_start' of the "
                                       f"same length", line=line)
        pairs = list(zip(texts, starts, strict=True))
    elif isinstance(value, list):
        if not all(isinstance(a, dict) for a in value):
            raise InputFileError(path, f"{where}field 'answers' must be a list of {{'text', 'answer_start'}} "
                                       "objects", line=line)
        pairs = [(a.get("text"), a.get("answer_start")) for a in value]
    else:
        raise InputFileError(path, f"{where}field 'answers' is {type(value).__name__}, expected an object or a list",
                             line=line)
    for text, start in pairs:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise InputFileError(path, f"{where}each answer needs a string 'text' and an integer 'answer_start', "
                                       f"got {text!r} at {start!r}", line=line)
    return [t for t, _ in pairs], [int(s) for _, s in pairs]


def _misplaced(ex: QAExample) -> str | None:
    """The first answer not found at its offset, described; None when all are where they say."""
    for text, start in zip(ex.answers, ex.answer_starts, strict=True):
        if not 0 <= start <= len(ex.context) - len(text) or ex.context[start:start + len(text)] != text:
            found = ex.context[start:start + len(text)] if 0 <= start < len(ex.context) else ""
            return f"answer {text!r} is not at answer_start {start} of the context (found {found!r} there)"
    return None


def _json_examples(path: Path, doc: Any) -> list[QAExample]:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputFileError(path, "expected the SQuAD layout: an object with a 'data' list")
    out = []
    for i, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputFileError(path, f"data[{i}]: expected a 'paragraphs' list")
        for j, par in enumerate(paragraphs):
            at = f"data[{i}].paragraphs[{j}]"
            if not isinstance(par, dict) or not isinstance(par.get("qas"), list):
                raise InputFileError(path, f"{at}: expected an object with 'context' and a 'qas' list")
            context = _string(par.get("context"), "context", path, f"{at}: ", None)
            for k, qa in enumerate(par["qas"]):
                where = f"{at}.qas[{k}]"
                if not isinstance(qa, dict):
                    raise InputFileError(path, f"{where}: expected an object")
                question = _string(qa.get("question"), "question", path, f"{where}: ", None)
                texts, starts = _answers(qa.get("answers"), path, f"{where}: ", None)
                if qa.get("is_impossible"):
                    texts, starts = [], []
                out.append(QAExample(str(qa.get("id", where)), question, context, texts, starts,
                                      f"{path}: {where}"))
    return out


def _jsonl_examples(path: Path, lines: list[str]) -> list[QAExample]:
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = json_object(path, line, n)
        question = _string(obj.get("question"), "question", path, "", n)
        context = _string(obj.get("context"), "context", path, "", n)
        texts, starts = _answers(obj.get("answers"), path, "", n)
        if obj.get("is_impossible"):
            texts, starts = [], []
        out.append(QAExample(str(obj.get("id", n)), question, context, texts, starts, f"{path}, line {n}"))
    return out


def read_squad(path: str | os.PathLike[str]) -> QAData:
    """Read a SQuAD v1/v2 ``.json`` or a ``.jsonl`` file (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in QA_FORMATS:
        raise InputFileError(path, f"unsupported question-answering format {suffix!r}; expected one of "
                                   f"{', '.join(QA_FORMATS)}")
    lines = read_lines(path)
    if suffix == ".json":
        try:
            doc = json.loads("\n".join(lines))
        except json.JSONDecodeError as e:
            raise InputFileError(path, f"not valid JSON ({e.msg} at column {e.colno})", line=e.lineno) from None
        found = _json_examples(path, doc)
    else:
        found = _jsonl_examples(path, lines)
    return checked(found, str(path))


def checked(found: list[QAExample], source: str) -> QAData:
    """Drop (warn about, count) the examples whose answers are not at their offsets."""
    examples, skipped = [], 0
    for ex in found:
        problem = _misplaced(ex)
        if problem is None:
            examples.append(ex)
        else:
            skipped += 1
            log.warning("%s: %s; example %s skipped", ex.where, problem, ex.id)
    if skipped:
        log.warning("%s: %d of %d examples skipped (answer not at its offset)", source, skipped, len(found))
    return QAData(examples, source, skipped)


def qa_data(questions: list[str], contexts: list[str], source: str = "input") -> QAData:
    """Unlabelled pairs (prediction) as QAData."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    for name, seq in (("questions", questions), ("contexts", contexts)):
        for i, t in enumerate(seq):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
    return QAData([QAExample(str(i), q, c, where=f"{source}[{i}]")
                   for i, (q, c) in enumerate(zip(questions, contexts, strict=True))], source)
