"""Texts from many files, read one at a time: what ``bertkit embed`` streams through at corpus scale.

``expand_inputs`` turns what the user named (files, folders, globs) into a sorted list of files; ``iter_texts``
yields their texts in that order, holding one line (or one Parquet record batch) at a time, so memory does not
grow with the input; ``count_texts`` counts them in one cheap pass, for a progress bar with an ETA.

Formats, as ``data/text_files.py`` reads them whole (row i of a .txt file is line i, an empty line an empty text):
``.txt``, ``.jsonl`` (field ``text`` or ``text_column``), ``.csv``/``.tsv`` (a header row; quoted cells may span
lines), and ``.parquet`` (a string column). Every error names the file and the line (Parquet: the row).
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from bertkit.data.text_files import decode_line, json_object
from bertkit.errors import InputFileError

STREAM_FORMATS = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
PARQUET_BATCH = 4096  # rows per Parquet record batch read


def expand_inputs(specs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, folders (every supported file below, recursively) and globs -> the files, each once, sorted within
    each spec (the order of ``specs`` is kept). Nothing matching, or an unsupported file named, is an error."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in STREAM_FORMATS)
            if not found:
                raise InputFileError(p, f"no {', '.join(STREAM_FORMATS)} file in this folder")
        elif p.is_file():
            if p.suffix.lower() not in STREAM_FORMATS:
                raise InputFileError(p, f"unsupported input format {p.suffix!r}; expected one of "
                                        f"{', '.join(STREAM_FORMATS)}")
            found = [p]
        elif glob.has_magic(str(spec)):
            found = sorted(Path(f) for f in glob.glob(str(spec), recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in STREAM_FORMATS)
            if not found:
                raise InputFileError(spec, "the pattern matches no supported input file")
        else:
            raise InputFileError(p, "file not found")
        out += [f for f in found if f not in out]
    return out


def iter_texts(files: Sequence[Path], text_column: str | None = None) -> Iterator[str]:
    """The texts of ``files`` in order, one at a time."""
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt" and text_column is not None:
            raise InputFileError(path, "--text-column applies to .jsonl/.csv/.tsv/.parquet input, not .txt")
        yield from _READERS[suffix](path, text_column or "text")


def count_texts(files: Sequence[Path], text_column: str | None = None) -> int:
    """How many texts ``iter_texts`` yields: line counts for .txt/.jsonl, Parquet metadata, a CSV parse."""
    total = 0
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        elif suffix in (".csv", ".tsv"):
            total += sum(1 for _ in _csv_texts(path, text_column or "text"))
        else:
            total += sum(1 for _ in _READERS[suffix](path, text_column or "text"))
    return total


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, split as ``bytes.splitlines`` splits the whole file."""
    n = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    with f:
        for raw in f:
            for line in raw.splitlines() or [b""]:  # a lone \r also ends a line, as in the whole-file reader
                n += 1
                text = decode_line(path, line, n)
                yield n, text.removeprefix("\ufeff") if n == 1 else text


def _txt_texts(path: Path, column: str) -> Iterator[str]:
    for _, text in _lines(path):
        yield text


def _jsonl_texts(path: Path, column: str) -> Iterator[str]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        obj = json_object(path, line, n)
        if column not in obj:
            raise InputFileError(path, f"missing field {column!r} (fields: {', '.join(obj) or 'none'})", line=n)
        if not isinstance(obj[column], str):
            raise InputFileError(path, f"field {column!r} is {type(obj[column]).__name__}, expected a string",
                                 line=n)
        yield obj[column]


def _csv_texts(path: Path, column: str) -> Iterator[str]:
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    with f:
        reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",", strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InputFileError(path, "empty file, expected a header row") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputFileError(path, f"cannot read the header ({e})", line=1) from None
        if column not in header:
            raise InputFileError(path, f"no column {column!r} in the header (columns: {', '.join(header)})", line=1)
        index = header.index(column)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise InputFileError(path, f"malformed row ({e})", line=start) from None
            if not row:
                continue
            if index >= len(row):
                raise InputFileError(path, f"row has {len(row)} fields, the header has {len(header)}", line=start)
            yield row[index]


def _parquet_texts(path: Path, column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputFileError(path, f"not a readable Parquet file ({e})") from None
    if column not in f.schema_arrow.names:
        raise InputFileError(path, f"no column {column!r} (columns: {', '.join(f.schema_arrow.names)})")
    row = 0
    for batch in f.iter_batches(batch_size=PARQUET_BATCH, columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                raise InputFileError(path, f"row {row}: column {column!r} holds {type(value).__name__}, "
                                           "expected a string")
            yield value


_READERS = {".txt": _txt_texts, ".jsonl": _jsonl_texts, ".csv": _csv_texts, ".tsv": _csv_texts,
            ".parquet": _parquet_texts}
