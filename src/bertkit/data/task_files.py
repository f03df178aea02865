"""Fine-tuning data: labelled examples for five tasks (``TaskData``) and reading them from files.

Tasks and what a label is:

``classification``       a class name (integer ids such as ``0``/``1`` are kept as the strings "0"/"1")
``pair-classification``  the same, for a pair of texts (columns ``text`` and ``text_pair``)
``multilabel``           a list of class names, possibly empty (CSV/TSV: one cell split on ``|``)
``regression``           a finite float
``ner``                  one tag per word: BIO (``O``, ``B-X``, ``I-X``), IOB1, BIOES, BILOU or plain tags
                         (``bertkit.data.tag_schemes`` checks them once the scheme is known)

Files: ``.csv``, ``.tsv``, ``.jsonl`` and ``.parquet`` for every task, with columns ``text``, ``text_pair`` and
``label``; NER reads CoNLL (``.conll``/``.txt``/``.tsv``: ``token tag`` per line, a blank line between sentences)
or ``.jsonl``/``.parquet`` with list columns ``tokens`` and ``tags``. Every error names the file and the line
(parquet: the row, counted from 1). Rows with an empty text or label are skipped with one warning.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bertkit.data.text_files import read_lines, read_records
from bertkit.errors import InputFileError

log = logging.getLogger("bertkit")

TASKS = ("classification", "pair-classification", "multilabel", "regression", "ner")
TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
CONLL_FORMATS = (".conll", ".txt", ".tsv")
SPLITS = ("train", "dev", "test")

@dataclass
class TaskData:
    task: str  # one of TASKS
    texts: list[str]  # first text of each example ([] for ner)
    pairs: list[str] | None  # second text (pair-classification only, else None)
    labels: list  # str | list[str] | float | list[str] of BIO tags, depending on the task
    words: list[list[str]] | None  # ner only: the words of each sentence
    source: str  # where it came from, for messages: a file path, or "bbc-news:train"
    where: list[str] | None = None  # where each example starts, e.g. "line 12" or "row 3", for messages

    def __post_init__(self) -> None:
        check_task(self.task)
        n = len(self)
        # labels == [] marks unlabelled data (texts to predict on); otherwise every column has one entry per example
        columns = {"labels": self.labels or None, "where": self.where}
        columns.update({"words": self.words} if self.task == "ner" else {"texts": self.texts, "pairs": self.pairs})
        for name, column in columns.items():
            if column is not None and len(column) != n:
                raise ValueError(f"TaskData: {len(column)} {name} for {n} examples")

    def __len__(self) -> int:
        if self.task == "ner":
            return len(self.labels if self.words is None else self.words)
        return len(self.texts)

    def subset(self, indices: Sequence[int], source: str | None = None) -> TaskData:
        def pick(column: list | None) -> list | None:
            return None if column is None else [column[i] for i in indices]

        return TaskData(self.task, [] if self.task == "ner" else pick(self.texts), pick(self.pairs),
                        pick(self.labels) if self.labels else [], pick(self.words),
                        self.source if source is None else source, pick(self.where))

    def label_names(self) -> list[str]:
        """Sorted distinct classes, or for ner the tags with "O" first (always present: a tagger needs it)."""
        if self.task == "regression":
            return []
        if self.task in ("multilabel", "ner"):
            names = {name for example in self.labels for name in example}
        else:
            names = set(self.labels)
        if self.task == "ner":
            return ["O", *sorted(names - {"O"})]
        return sorted(names)

    def label_counts(self) -> dict[str, int]:
        """Examples per class (multilabel: examples carrying it; ner: tokens per tag), in label_names order."""
        if self.task == "regression":
            return {}
        flat = Counter(self.labels) if self.task in ("classification", "pair-classification") else \
            Counter(name for example in self.labels for name in example)
        return {name: flat[name] for name in self.label_names()}


# ----------------------------------------------------------------------------------------------------------------
# reading files


class _Bad(ValueError):
    """A bad value inside a row; the caller adds file and line."""


def _fail(path: object, where: str, problem: str) -> InputFileError:
    # "line N" goes into InputFileError's own "path, line N:" form; parquet rows become "path: row N: ..."
    unit, _, number = where.partition(" ")
    if unit == "line":
        return InputFileError(path, problem, line=int(number))
    return InputFileError(path, f"{where}: {problem}")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _parquet_records(path: Path, columns: list[str]) -> list[tuple[str, list[object]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for files that are not parquet
        raise InputFileError(path, f"cannot read as parquet ({e})") from None
    for c in columns:
        if c not in table.column_names:
            raise InputFileError(path, f"no column {c!r} (columns: {', '.join(table.column_names)})")
    values = [table.column(c).to_pylist() for c in columns]
    return [(f"row {i + 1}", [v[i] for v in values]) for i in range(table.num_rows)]


def _text(value: object, column: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise _Bad(f"text column {column!r} holds {type(value).__name__} {value!r}, expected a string")
    return value if value.strip() else None


_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _number_as_class(number: float, column: str) -> str:
    if math.isfinite(number) and number.is_integer():
        return str(int(number))  # 1.0 (pandas writes int columns with gaps as floats) is class "1"
    raise _Bad(f"label column {column!r} holds a number ({number:g}); classification needs class names or "
               "integer class ids — for numeric targets use --task regression")


def _class_name(value: object, column: str, from_text: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else _number_as_class(value, column)
    if not isinstance(value, str):
        raise _Bad(f"label column {column!r} holds {type(value).__name__} {value!r}, expected a class name")
    value = value.strip()
    if not value:
        return None
    # A CSV cell has no types: "3.5" there is a number. A JSON string "3.5" was quoted on purpose: a name.
    if from_text and not _INTEGER.fullmatch(value) and _DECIMAL.fullmatch(value):
        return _number_as_class(float(value), column)
    return value


def _target(value: object, column: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value)
        except ValueError:
            raise _Bad(f"label column {column!r} holds {value.strip()!r}; regression needs numbers — "
                       "for class names use --task classification") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _Bad(f"label column {column!r} holds {type(value).__name__} {value!r}; regression needs numbers")
    if math.isnan(number):
        return None  # pandas' way of writing "no value"
    if not math.isfinite(number):
        raise _Bad(f"label column {column!r} holds {number}; regression needs finite numbers")
    return number


def _label_list(value: object, column: str, separator: str) -> list[str] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        parts = value.split(separator)  # "" gives [], i.e. an example with no label, not a missing one
    elif isinstance(value, list | tuple):
        parts = []
        for part in value:
            if isinstance(part, bool) or not isinstance(part, str | int):
                raise _Bad(f"label column {column!r} holds {part!r} in its list, expected class names")
            parts.append(str(part))
    else:
        raise _Bad(f"label column {column!r} holds {type(value).__name__} {value!r}, expected a list of class "
                   f"names (or in CSV one cell separated by {separator!r})")
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _warn_skipped(path: object, skipped: list[str], total: int, what: str) -> None:
    if not skipped:
        return
    unit = skipped[0].partition(" ")[0]
    numbers = ", ".join(w.partition(" ")[2] for w in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    log.warning("%s: skipped %d of %d rows with %s (%ss %s)", path, len(skipped), total, what, unit, numbers)


def examples_from_records(path: Path, task: str, records: list[tuple[str, list[object]]], columns: list[str],
              separator: str, from_text: bool) -> TaskData:
    """Turn raw (where, [text, (pair,) label]) records into checked TaskData; empty rows are skipped."""
    texts: list[str] = []
    pairs: list[str] = []
    labels: list = []
    where: list[str] = []
    skipped: list[str] = []
    is_pair = task == "pair-classification"
    for at, values in records:
        try:
            text = _text(values[0], columns[0])
            pair = _text(values[1], columns[1]) if is_pair else ""
            raw = values[-1]
            if task == "regression":
                label = _target(raw, columns[-1])
            elif task == "multilabel":
                label = _label_list(raw, columns[-1], separator)
            else:
                label = _class_name(raw, columns[-1], from_text)
        except _Bad as e:
            raise _fail(path, at, str(e)) from None
        if text is None or pair is None or label is None:
            skipped.append(at)
            continue
        texts.append(text)
        pairs.append(pair)
        labels.append(label)
        where.append(at)
    _warn_skipped(path, skipped, len(records), "an empty text or label")
    if not labels:
        raise InputFileError(path, f"no usable examples ({len(records)} rows, {len(skipped)} with an empty "
                                   "text or label)")
    return TaskData(task, texts, pairs if is_pair else None, labels, None, str(path), where)


def _check_tag(tag: str) -> str | None:
    """The problem with a tag as read, or None; which tags may follow which is the tag scheme's business
    (``bertkit.data.tag_schemes.resolve_scheme``, once the whole dataset is read and its scheme known)."""
    if any(c.isspace() for c in tag) or not tag:
        return f"tag {tag!r} is empty or holds spaces"
    return None


def read_conll(path: Path, lines: list[str]) -> TaskData:
    """CoNLL-style NER: ``token<ws>tag`` per line (first and last field), blank line between sentences."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    where: list[str] = []
    sentence: list[str] = []
    sentence_tags: list[str] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if sentence:
                words.append(sentence)
                tags.append(sentence_tags)
                sentence, sentence_tags = [], []
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            raise InputFileError(path, f"expected a token and its tag, got {line.strip()!r}", line=n)
        problem = _check_tag(fields[-1])
        if problem:
            raise InputFileError(path, problem, line=n)
        if not sentence:
            where.append(f"line {n}")
        sentence.append(fields[0])
        sentence_tags.append(fields[-1])
    if sentence:
        words.append(sentence)
        tags.append(sentence_tags)
    if not words:
        raise InputFileError(path, "no usable examples (no token lines)")
    return TaskData("ner", [], None, tags, words, str(path), where)


def _nerexamples_from_records(path: Path, records: list[tuple[str, list[object]]], columns: list[str]) -> TaskData:
    words: list[list[str]] = []
    tags: list[list[str]] = []
    where: list[str] = []
    skipped: list[str] = []
    for at, (tokens, labels) in records:
        if tokens is None or labels is None or tokens == []:
            skipped.append(at)
            continue
        for name, value in zip(columns, (tokens, labels), strict=True):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _fail(path, at, f"column {name!r} must be a list of strings, got {value!r:.80}")
        if len(tokens) != len(labels):
            raise _fail(path, at, f"{len(tokens)} tokens but {len(labels)} tags")
        for i, tag in enumerate(labels):
            problem = _check_tag(tag)
            if problem:
                raise _fail(path, at, f"token {i + 1} ({tokens[i]!r}): {problem}")
        words.append(tokens)
        tags.append(labels)
        where.append(at)
    _warn_skipped(path, skipped, len(records), "no tokens or tags")
    if not words:
        raise InputFileError(path, f"no usable examples ({len(records)} rows, {len(skipped)} without tokens/tags)")
    return TaskData("ner", [], None, tags, words, str(path), where)


def read_task_file(path: str | Path, task: str, text_column: str | None = None, text_pair_column: str | None = None,
                   label_column: str | None = None, label_separator: str = "|") -> TaskData:
    """Read labelled examples for `task` from one file; the format follows the extension (see module doc)."""
    check_task(task)
    if text_pair_column is not None and task != "pair-classification":
        raise ValueError(f"a text pair column applies to pair-classification, not {task}")
    path = Path(path)
    suffix = path.suffix.lower()
    if task == "ner":
        if suffix in CONLL_FORMATS:
            if text_column or label_column:
                raise InputFileError(path, "CoNLL files have no named columns; --text-column/--label-column "
                                           "apply to .jsonl/.parquet NER files")
            return read_conll(path, read_lines(path))
        columns = [text_column or "tokens", label_column or "tags"]
        if suffix == ".jsonl":
            return _nerexamples_from_records(path, read_records(path, read_lines(path), suffix, columns), columns)
        if suffix == ".parquet":
            return _nerexamples_from_records(path, _parquet_records(path, columns), columns)
        raise InputFileError(path, f"unsupported NER format {suffix!r}; expected one of "
                                   f"{', '.join((*CONLL_FORMATS, '.jsonl', '.parquet'))}")
    if suffix not in TABLE_FORMATS:
        raise InputFileError(path, f"unsupported format {suffix!r}; expected one of {', '.join(TABLE_FORMATS)}")
    columns = [text_column or "text", label_column or "label"]
    if task == "pair-classification":
        columns.insert(1, text_pair_column or "text_pair")
    if suffix == ".parquet":
        records = _parquet_records(path, columns)
    else:
        records = read_records(path, read_lines(path), suffix, columns)
    return examples_from_records(path, task, records, columns, label_separator, from_text=suffix in (".csv", ".tsv"))
