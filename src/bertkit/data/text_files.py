"""Reading texts from .txt, .jsonl and .csv/.tsv files, with errors that name file and line.

``.txt``   one text per line (an empty line is an empty text, so row i of the output is line i)
``.jsonl`` one JSON object per line with a text field (default ``text``); blank lines are skipped
``.csv``   a header row and a text column (default ``text``); ``.tsv`` the same, tab-separated. Parsed
           strictly: an unbalanced quote is an error naming the line its row starts on, and rows whose quoted
           cells span lines (so that row i is no longer line i) are logged as a warning naming those lines
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from bertkit.errors import InputFileError

log = logging.getLogger("bertkit")

TEXT_FORMATS = (".txt", ".jsonl", ".csv", ".tsv")


def read_lines(path: Path) -> list[str]:
    """Decode UTF-8 line by line so a bad byte is reported with its line number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, expected a file") from None
    lines = [decode_line(path, line, n) for n, line in enumerate(raw.splitlines(), start=1)]
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # byte-order mark
    return lines


def decode_line(path: Path, line: bytes, n: int) -> str:
    """Line ``n`` of ``path`` as UTF-8, or an InputFileError naming the bad byte, its column and the line."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})",
                             line=n) from None


def read_texts(path: str | os.PathLike[str], text_column: str | None = None) -> list[str]:
    """Read the texts of one input file; the format follows the file's extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_FORMATS:
        raise InputFileError(path, f"unsupported input format {suffix!r}; expected one of {', '.join(TEXT_FORMATS)}")
    lines = read_lines(path)
    if suffix == ".txt":
        if text_column is not None:
            raise InputFileError(path, "--text-column applies to .jsonl/.csv/.tsv input, not .txt")
        return lines
    column = text_column or "text"
    texts = []
    for where, (value,) in read_records(path, lines, suffix, [column], required=True):
        if not isinstance(value, str):
            raise InputFileError(path, f"{where}: field {column!r} is {type(value).__name__}, expected a string")
        texts.append(value)
    return texts


def read_text_pairs(path: str | os.PathLike[str], paired: bool, text_column: str | None = None,
                    pair_column: str | None = None) -> tuple[list[str], list[str] | None]:
    """The texts of one input file, and their second texts (column ``pair_column``, default ``text_pair``) when
    ``paired``: what ``bertkit predict`` and ``bertkit explain`` read for a sequence task model."""
    path = Path(path)
    texts = read_texts(path, text_column)
    if not paired:
        return texts, None
    if path.suffix.lower() == ".txt":
        raise InputFileError(path, "a pair model needs two texts per row: use .jsonl/.csv/.tsv")
    return texts, read_texts(path, pair_column or "text_pair")


def json_object(path: Path, line: str, n: int) -> dict:
    """One JSONL line as a dict, or an InputFileError naming file and line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputFileError(path, f"not valid JSON ({e.msg} at column {e.colno})", line=n) from None
    if not isinstance(obj, dict):
        raise InputFileError(path, f"expected a JSON object, got {type(obj).__name__}", line=n)
    return obj


def read_records(path: Path, lines: list[str], suffix: str, columns: list[str],
                 required: bool = False, multiline_ok: bool = False) -> list[tuple[str, list[object]]]:
    """Rows of a .csv/.tsv/.jsonl file as ("line N", values of ``columns``).

    A JSON object without one of the fields gives None there, or an error at its line when ``required``.
    ``multiline_ok``: the file is known to hold quoted cells with line breaks (no warning about them).
    """
    records: list[tuple[str, list[object]]] = []
    if suffix == ".jsonl":
        seen: dict[str, None] = {}  # field names in first-seen order, for the missing-column message
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            obj = json_object(path, line, n)
            seen.update(dict.fromkeys(obj))
            missing = [c for c in columns if c not in obj]
            if required and missing:
                raise InputFileError(path, f"missing field {missing[0]!r} (fields: {', '.join(obj) or 'none'})",
                                     line=n)
            records.append((f"line {n}", [obj.get(c) for c in columns]))
        for c in columns:
            if records and c not in seen:
                raise InputFileError(path, f"no field {c!r} in any object (fields: {', '.join(seen) or 'none'})")
        return records
    # strict: a quote left open swallows the following lines into one cell and shifts every later row; strict
    # parsing turns most such files into an error (text after a closing quote, or a quote open at the end)
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter="\t" if suffix == ".tsv" else ",", strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(path, "empty file, expected a header row") from None
    for c in columns:
        if c not in header:
            raise InputFileError(path, f"no column {c!r} in the header (columns: {', '.join(header)})", line=1)
    index = [header.index(c) for c in columns]
    spanning: list[int] = []  # rows whose quoted cells hold line breaks: legitimate, or an unbalanced quote
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines: report the line the row starts on
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputFileError(path, f"malformed CSV ({e}): a quote opened in the row starting here is not "
                                       f"closed, or a quoted field has text after its closing quote; the file "
                                       f"stops parsing at line {reader.line_num}", line=start) from None
        if reader.line_num > start:
            spanning.append(start)
        if not row:
            continue
        if max(index) >= len(row):
            raise InputFileError(path, f"row has {len(row)} fields, the header has {len(header)}", line=start)
        records.append((f"line {start}", [row[i] for i in index]))
    if spanning and not multiline_ok:
        where = ", ".join(map(str, spanning[:5])) + (f" and {len(spanning) - 5} more" if len(spanning) > 5 else "")
        log.warning("%s: %d row(s) span several lines (quoted cells with line breaks), starting at line(s) %s; "
                    "%d rows come from %d lines. If that is not intended, a quote is unbalanced there.",
                    path, len(spanning), where, len(records), len(lines) - 1)
    return records
