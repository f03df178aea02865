"""Reading a directory of embedding parts (what ``bertkit embed`` writes for a large input; the writer is
``bertkit.distributed.parts``).

On disk::

    manifest.json            format, settings (model, pooling, input, shard, ...), complete, parts: {k: entry}
    part-00007.parquet       columns ``row`` (int64), ``embedding`` (fixed-size list of float32), optional ``text``

A reader checks each part's sha256 against its manifest entry before using it, so a corrupt or truncated part is
an error naming the file, never wrong vectors. ``iter_parts`` yields one part at a time (memory: one part), for
consumers that must not hold a corpus in RAM (building an index); ``read_parts`` gathers everything in row order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.errors import BertkitError
from bertkit.utils.atomic import sha256_file

FORMAT, FORMAT_VERSION = "bertkit-embeddings", 1
MANIFEST = "manifest.json"


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an embedding-parts directory; a clear error when it is not one."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BertkitError(f"{directory}: no {MANIFEST}: not a directory `bertkit embed` wrote parts into") from None
    except json.JSONDecodeError as e:
        raise BertkitError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BertkitError(f"{path}: not a bertkit embeddings manifest (format {manifest.get('format')!r})")
    return manifest


def is_parts_directory(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def iter_parts(*directories: str | os.PathLike[str], verify: bool = True,
               with_text: bool = False) -> Iterator[dict[str, np.ndarray | list[str]]]:
    """One finished part at a time, in each directory's part order: ``{"row": (n,) int64, "embedding": (n, dim)
    float32}`` (and ``"text"``: n strings, with ``with_text``, when the run stored them). ``verify``: check each
    part's sha256 against the manifest first."""
    import pyarrow.parquet as pq

    for d in map(Path, directories):
        manifest = read_manifest(d)
        if not manifest.get("complete"):
            raise BertkitError(f"{d}: the run that writes it has not finished (resume it with --resume)")
        if with_text and not manifest["settings"].get("with_text"):
            raise BertkitError(f"{d}: the parts hold no text (embed them again with --with-text)")
        columns = ["row", "embedding"] + (["text"] if with_text else [])
        for entry in manifest["parts"].values():
            path = d / entry["file"]
            if verify and sha256_file(path) != entry["sha256"]:
                raise BertkitError(f"{path}: its checksum differs from the manifest's: the part is corrupt")
            table = pq.read_table(path, columns=columns)
            emb = table.column("embedding").combine_chunks()
            part: dict[str, Any] = {"row": table.column("row").to_numpy(),
                                    "embedding": emb.flatten().to_numpy().reshape(len(emb), -1)}
            if with_text:
                part["text"] = table.column("text").to_pylist()
            yield part


def read_parts(*directories: str | os.PathLike[str], verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n,) int64, embeddings (n, dim) float32) of one output directory, or of several shards' together,
    in row order."""
    parts = list(iter_parts(*directories, verify=verify))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    r = np.concatenate([p["row"] for p in parts])
    v = np.concatenate([p["embedding"] for p in parts])
    order = np.argsort(r, kind="stable")
    return r[order], v[order]
