"""Embedding parts (what ``bertkit embed`` writes for a large input; ``data/embedding_parts.py`` reads them) as
the input of an index: one directory, or several shards' directories together, a part at a time.

Each item's id is its row number (the position of its text in the embedded input, counted across the input
files in order, as ``bertkit embed`` numbers them); when the parts hold the texts (``--with-text``), each item's
metadata is ``{"text": ...}``, so searches can show it and a reranker can read it. The index records the
parts' model, pooling, document prompt and length, so ``index search`` embeds queries the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.embedding_parts import iter_parts, read_manifest
from bertkit.errors import BertkitError
from bertkit.model.pooling import pooling_modes

log = logging.getLogger("bertkit")

# settings that may differ between the shards of one corpus
SHARD_SETTINGS = ("shard",)


@dataclass
class PartsInput:
    directories: list[Path]
    settings: dict[str, Any]  # the first directory's; every other one's equal but for SHARD_SETTINGS
    dim: int
    count: int
    with_text: bool


def open_parts(directories: Sequence[str | os.PathLike[str]]) -> PartsInput:
    """Check the manifests of ``directories`` (finished, one model and settings, rows not repeated across
    them) before anything is read; the parts themselves are checked as they are read."""
    if not directories:
        raise BertkitError("no embedding-parts directory given")
    dirs = [Path(d) for d in directories]
    manifests = [read_manifest(d) for d in dirs]
    first = manifests[0]
    ranges: list[tuple[int, int, Path]] = []
    for d, m in zip(dirs, manifests, strict=True):
        if not m.get("complete"):
            raise BertkitError(f"{d}: the run that writes it has not finished (resume it with --resume)")
        differ = sorted(k for k in set(first["settings"]) | set(m["settings"])
                        if k not in SHARD_SETTINGS and first["settings"].get(k) != m["settings"].get(k))
        if differ:
            raise BertkitError(f"{d} and {dirs[0]} were embedded with different settings ({', '.join(differ)}); "
                               "an index holds vectors of one model made one way")
        if m.get("dim") != first.get("dim"):
            raise BertkitError(f"{d} holds {m.get('dim')}-dimensional vectors, {dirs[0]} {first.get('dim')}")
        ranges += [(e["first_row"], e["first_row"] + e["rows"], d / e["file"]) for e in m["parts"].values()]
    ranges.sort(key=lambda r: r[0])
    for (_, end, a), (start, _, b) in pairwise(ranges):
        if start < end:  # the same shard given twice, or shards of two runs: ids (row numbers) would repeat
            raise BertkitError(f"{a} and {b} hold the same rows (from {start}); give each shard's directory once")
    if not ranges:
        raise BertkitError(f"{dirs[0]}: the parts hold no rows; there is nothing to index")
    if not isinstance(first.get("dim"), int):
        raise BertkitError(f"{dirs[0]}: its manifest records no vector dimension")
    return PartsInput(dirs, first["settings"], first["dim"], sum(e - s for s, e, _ in ranges),
                      bool(first["settings"].get("with_text")))


def parts_model(settings: dict[str, Any], query_prompt: str | None = None) -> dict[str, Any]:
    """The index manifest's model entry for vectors made with ``settings`` (a parts manifest's). The query
    prompt: ``query_prompt``, else None (searches then use the model's own "query" prompt)."""
    directory = settings.get("model_directory")
    pooling = settings.get("pooling")
    return {"name": settings["model"], "directory": str(Path(directory).resolve()) if directory else None,
            "pooling": list(pooling_modes(pooling)) if pooling is not None else None, "normalized": True,
            "max_length": settings.get("max_length"), "document_prompt": settings.get("prompt", ""),
            "query_prompt": query_prompt}


def iter_items(parts: PartsInput) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
    """(ids, unit vectors (n, dim) float32, metadata) of each part in turn; each part's checksum is checked
    first (``iter_parts``: an error names a corrupt file). Vectors a run left unnormalized are normalized
    (the index searches by cosine; that is what ``normalize=True`` would have made), with a message."""
    said = False
    for d in parts.directories:
        files = [d / e["file"] for e in read_manifest(d)["parts"].values()]
        for path, part in zip(files, iter_parts(d, with_text=parts.with_text), strict=True):
            vectors = np.asarray(part["embedding"], dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != parts.dim:
                raise BertkitError(f"{path}: holds vectors of shape {vectors.shape}, the manifest says dimension "
                                   f"{parts.dim}")
            norms = np.linalg.norm(vectors, axis=1)
            if not np.isfinite(norms).all() or (norms == 0).any():
                bad = int(np.flatnonzero(~np.isfinite(norms) | (norms == 0))[0])
                raise BertkitError(f"{path}: the vector of row {int(part['row'][bad])} is zero or not finite")
            if np.abs(norms - 1).max() > 1e-3:
                if not said:
                    log.warning("%s: the vectors are not unit-norm; normalizing them (the index searches by cosine)",
                                d)
                    said = True
                vectors = vectors / norms[:, None]
            ids = [str(r) for r in part["row"].tolist()]
            texts = part.get("text")
            metadata = [{"text": t} for t in texts] if texts is not None else [{} for _ in ids]
            yield ids, vectors, metadata
