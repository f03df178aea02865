"""Reading texts from .txt, .jsonl and .csv/.tsv files, with errors that name file and line.

``.txt``   one text per line (an empty line is an empty text, so row i of the output is line i)
``.jsonl`` one JSON object per line with a text field (default ``text``); blank lines are skipped
``.csv``   a header row and a text column (default ``text``); ``.tsv`` the same, tab-separated
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from bertkit.errors import InputFileError

TEXT_FORMATS = (".txt", ".jsonl", ".csv", ".tsv")


def read_lines(path: Path) -> list[str]:
    """Decode UTF-8 line by line so a bad byte is reported with its line number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, expected a file") from None
    lines = []
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputFileError(path, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})",
                                 line=n) from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # byte-order mark
    return lines


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
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(path, f"not valid JSON ({e.msg} at column {e.colno})", line=n) from None
            if not isinstance(obj, dict):
                raise InputFileError(path, f"expected a JSON object, got {type(obj).__name__}", line=n)
            if column not in obj:
                raise InputFileError(path, f"missing field {column!r} (fields: {', '.join(obj) or 'none'})", line=n)
            if not isinstance(obj[column], str):
                raise InputFileError(path, f"field {column!r} is {type(obj[column]).__name__}, expected a string",
                                     line=n)
            texts.append(obj[column])
        return texts
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(path, "empty file, expected a header row") from None
    if column not in header:
        raise InputFileError(path, f"no column {column!r} in the header (columns: {', '.join(header)})", line=1)
    col = header.index(column)
    texts = []
    for row in reader:
        if not row:
            continue
        if col >= len(row):
            raise InputFileError(path, f"row has {len(row)} fields, column {column!r} is field {col + 1}",
                                 line=reader.line_num)
        texts.append(row[col])
    return texts
