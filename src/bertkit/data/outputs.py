"""Writing embedding matrices to .npy or .parquet, atomically (temp file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bertkit.utils.atomic import atomic_path

EMBEDDING_FORMATS = (".npy", ".parquet")


def check_output_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in EMBEDDING_FORMATS:
        raise ValueError(f"{path}: unsupported output format {path.suffix!r}; expected .npy or .parquet")
    return path


def write_embeddings(path: str | os.PathLike[str], vectors: np.ndarray, texts: list[str] | None = None) -> Path:
    """(n, dim) float32 -> .npy (the matrix) or .parquet (columns ``index``, ``embedding``[, ``text``])."""
    path = check_output_path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            dim = vectors.shape[1]
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
            columns = {
                "index": pa.array(np.arange(len(vectors), dtype=np.int64)),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
            if texts is not None:
                columns["text"] = pa.array(texts, type=pa.string())
            pq.write_table(pa.table(columns), tmp)
    return path
