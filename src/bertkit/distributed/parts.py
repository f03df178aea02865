"""Streaming, resumable embedding of a corpus into a directory of Parquet parts.

Rows are numbered across the input files in order (``data/text_stream.py``) and cut into parts of ``part_rows``
rows: part k holds rows ``k * part_rows`` .. ``(k + 1) * part_rows - 1``. Each part is embedded, written
(``part-00007.parquet``: columns ``row``, ``embedding``, optionally ``text``; temp file, fsync, rename) and then
entered in ``manifest.json`` with its row count and sha256, which is rewritten the same way. Memory holds one
part's texts and vectors, whatever the input's size.

A run killed at any point (``kill -9``) resumes with ``resume=True``: parts the manifest names are kept when their
checksum holds (a corrupt or truncated one is redone), the part that was being written is redone, so at most one
part's work is lost, and the result equals an uninterrupted run's, since a part is embedded as the same batches.
The manifest names the model, its settings, the input and the shard: resuming with any of them different is
refused, naming what differs.

``shard=(i, n)`` embeds the parts whose number is i modulo n: n machines can split a corpus without a
coordinator, each writing its own directory; ``read_parts`` / ``iter_parts`` (``data/embedding_parts.py``, where
the format is read) read one directory, or several shards' together.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bertkit.data.embedding_parts import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest
from bertkit.data.embedding_parts import read_parts as read_parts  # re-exported: parts are read in data/
from bertkit.data.text_stream import count_texts, expand_inputs, iter_texts
from bertkit.encoder import Encoder
from bertkit.errors import ConfigError
from bertkit.utils.atomic import atomic_path, atomic_write_text, sha256_file
from bertkit.utils.output_paths import OutputPathError, check_output_dir
from bertkit.utils.runtime import map_large_allocations, trim_heap

log = logging.getLogger("bertkit")

PART_ROWS = 10_000


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if spec is None:
        return 0, 1
    if isinstance(spec, tuple):
        i, n = spec
    else:
        head, sep, tail = str(spec).partition("/")
        if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
            raise ConfigError(f"--shard {spec!r}: expected i/n with whole numbers, e.g. 0/4 (the first of four)")
        i, n = int(head), int(tail)
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {i}/{n}: needs n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return i, n


def embed_to_parts(encoder: Encoder, inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                   *, text_column: str | None = None, part_rows: int = PART_ROWS,
                   shard: str | tuple[int, int] | None = None, resume: bool = False, overwrite: bool = False,
                   with_text: bool = False, pooling: str | Sequence[str] | None = None,
                   normalize: bool | None = None, prompt_name: str | None = None, prompt: str | None = None,
                   batch_size: int | None = None, progress: bool | None = None, long_inputs: str = "truncate",
                   stride: int | None = None) -> dict[str, Any]:
    """Embed every text of ``inputs`` (files, folders, globs) into Parquet parts under ``output_dir``; returns the
    manifest. ``pooling`` .. ``prompt``, ``long_inputs``, ``stride`` as ``Encoder.embed``; see the module docstring
    for parts, resume, shard."""
    if part_rows < 1:
        raise ConfigError(f"part_rows must be >= 1, got {part_rows}")
    i, n = parse_shard(shard)
    files = expand_inputs(inputs)
    out = check_output_dir(output_dir)
    settings = _settings(encoder, files, text_column, part_rows, (i, n), with_text, pooling, normalize,
                         encoder.sentence.resolve_prompt(prompt_name, prompt))
    if long_inputs != "truncate":  # (only then: manifests written before the option still resume)
        settings.update(long_inputs=long_inputs, stride=stride)
    manifest = _start(out, settings, resume, overwrite)
    map_large_allocations()  # flat memory over any number of parts (utils/runtime.py says why and what it costs)
    _save(out, manifest)  # the settings first: a run killed before its first part still resumes (and is checked)
    done = manifest["parts"]
    # one counting pass over the input, only for the bar's total and ETA (not when the caller turned the bar off)
    total = None if progress is False else count_texts(files, text_column)
    shown = progress if progress is not None else (total or 0) >= 1000
    started, embedded, rows = time.perf_counter(), 0, 0
    with tqdm(total=total, disable=not shown, unit="text", desc=f"embed shard {i}/{n}" if n > 1 else "embed",
              mininterval=1.0) as bar:
        for k, texts in _parts(iter_texts(files, text_column), part_rows):
            rows += len(texts)
            if k % n != i or str(k) in done:
                bar.update(len(texts))
                continue
            vectors = encoder.embed(texts, batch_size, pooling=pooling, normalize=normalize, progress=False,
                                    prompt_name=prompt_name, prompt=prompt, long_inputs=long_inputs, stride=stride)
            done[str(k)] = _write_part(out, k, k * part_rows, vectors, texts if with_text else None)
            _save(out, manifest)  # the part counts as done only now: a kill before this redoes it
            trim_heap()  # what the small allocations left free in the heap, back to the OS between parts
            embedded += len(texts)
            bar.update(len(texts))
    manifest.update(complete=True, rows=rows, dim=int(encoder.sentence.dim(pooling)))
    _save(out, manifest)
    seconds = time.perf_counter() - started
    log.info("embedded %d texts in %.1f s into %d part(s) at %s (shard %d/%d; %d rows in all)", embedded, seconds,
             len(done), out, i, n, rows)
    return manifest


# ---- the run's pieces ---------------------------------------------------------------------------------------------
def _settings(encoder: Encoder, files: list[Path], text_column: str | None, part_rows: int, shard: tuple[int, int],
              with_text: bool, pooling: Any, normalize: bool | None, prompt: str) -> dict[str, Any]:
    """Everything that decides the vectors and the parts: a resumed run must have all of it the same."""
    cfg = encoder.model.config
    return {
        "model": encoder.name, "model_directory": str(encoder.source_dir) if encoder.source_dir else None,
        "family": cfg.model_type, "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
        "max_length": encoder.max_length, "precision": encoder.engine.precision,
        "pooling": list(encoder.sentence.modes) if pooling is None else pooling, "normalize": normalize,
        "prompt": prompt, "text_column": text_column, "with_text": with_text, "part_rows": part_rows,
        "shard": list(shard),
        "input": [{"file": str(f), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
                  for f, st in ((f, f.stat()) for f in files)],
    }


def _start(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    """The manifest to continue: a fresh one, or (``resume``) the directory's own after checking that it was
    written with the same settings and that its parts are intact."""
    has_files = out.is_dir() and any(out.iterdir())
    if has_files and not (resume or overwrite):
        raise OutputPathError(f"{out} is not empty; resume the run with --resume, or start over with --overwrite")
    if resume and (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        differ = [k for k in settings if manifest["settings"].get(k) != settings[k]]
        if differ:
            shown = "; ".join(f"{k}: {manifest['settings'].get(k)!r} there, {settings[k]!r} now" for k in differ)
            raise ConfigError(f"{out} was written with other settings, so --resume would mix two runs ({shown}); "
                              "give another --output, or --overwrite")
        for k, entry in list(manifest["parts"].items()):
            path = out / entry["file"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                log.warning("%s: missing or corrupt (checksum differs from the manifest): it is embedded again", path)
                del manifest["parts"][k]
        log.info("resuming %s: %d part(s) done", out, len(manifest["parts"]))
        manifest["complete"] = False
        return manifest
    if overwrite and out.is_dir():
        for f in out.iterdir():
            if f.is_file() and (f.name == MANIFEST or f.name.startswith("part-")):
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return {"format": FORMAT, "version": FORMAT_VERSION, "settings": settings, "complete": False, "parts": {}}


def _parts(texts: Iterator[str], part_rows: int) -> Iterator[tuple[int, list[str]]]:
    """(part number, its texts), reading ``part_rows`` texts at a time."""
    k, chunk = 0, []
    for text in texts:
        chunk.append(text)
        if len(chunk) == part_rows:
            yield k, chunk
            k, chunk = k + 1, []
    if chunk:
        yield k, chunk


def _write_part(out: Path, k: int, first_row: int, vectors: np.ndarray, texts: list[str] | None) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = f"part-{k:05d}.parquet"
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns = {"row": pa.array(np.arange(first_row, first_row + len(vectors), dtype=np.int64)),
               "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    if texts is not None:
        columns["text"] = pa.array(texts, type=pa.string())
    with atomic_path(out / name) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return {"file": name, "first_row": first_row, "rows": len(vectors), "sha256": sha256_file(out / name)}


def _save(out: Path, manifest: dict[str, Any]) -> None:
    """The manifest, its parts in part order, through a temp file: a kill leaves the old one or the new one."""
    ordered = {**manifest, "parts": dict(sorted(manifest["parts"].items(), key=lambda kv: int(kv[0])))}
    atomic_write_text(out / MANIFEST, json.dumps(ordered, indent=1) + "\n")
