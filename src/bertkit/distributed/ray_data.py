"""Embedding on Ray Data: the same engine in a pool of Ray actors, over a Ray Dataset or a cluster's worth of files.

``embed_dataset(ds, model)`` adds an ``embedding`` column (a fixed-size list of float32, one vector per row) to a
Ray Dataset: ``ds.map_batches(EmbedActor, compute=ActorPoolStrategy(size=workers))`` on pyarrow batches, each
actor loading the model once and running ``Encoder.embed`` with ``threads_per_worker`` torch threads (or one GPU).
Row order is kept (``preserve_order``), and the engine is padding-free, so a text's vector does not depend on the
batch it lands in: the vectors equal the single-process ``Encoder.embed`` ones.

``embed_to_parquet(inputs, output_dir, model)`` is what ``bertkit embed --ray`` runs: Ray Data's own readers
(``read_text`` / ``read_json(lines=True)`` / ``read_csv`` / ``read_parquet``, by suffix), ``embed_dataset``, and
Ray's ``write_parquet``. The output is a plain Parquet dataset, not the resumable parts of ``parts.py`` (Ray's
writers name and size the files; a Ray job is retried by Ray, not resumed by us)::

    manifest.json                 format "bertkit-ray-embeddings", settings (model, pooling, input, ...), rows,
                                  dim, files: [{file, first_row, rows}] in row order
    <uuid>_<task>-<i>.parquet     columns ``embedding`` (fixed-size list of float32) and, with ``with_text``, ``text``

Row r of the corpus (texts numbered across the inputs in order, as ``data/text_stream.py`` numbers them) is row
``r - first_row`` of the file whose range holds it; ``pyarrow.parquet.read_table`` on the files in manifest order,
or ``read_ray_output``, gives the vectors in row order. Any Parquet reader (Spark, DuckDB, ``ray.data``) reads the
directory as it is. The manifest is written last: a directory without one holds a run that did not finish.

``ray`` is imported only here and only when called: a missing one is an error naming ``pip install 'bertkit[ray]'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertkit.data.text_stream import expand_inputs
from bertkit.distributed.ray_cluster import connect, require_ray
from bertkit.errors import BertkitError, ConfigError, InputFileError
from bertkit.inference.engine import EngineOptions
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.output_paths import OutputPathError, check_output_dir

if TYPE_CHECKING:  # only for annotations: importing ray costs seconds and it is an optional extra
    import pyarrow as pa
    import ray.data

    from bertkit.model.directory import ModelDir

log = logging.getLogger("bertkit")

RAY_FORMAT, RAY_FORMAT_VERSION = "bertkit-ray-embeddings", 1
MANIFEST = "manifest.json"
BATCH_TEXTS = 1024  # texts per actor call: enough for the engine's length bucketing, small enough to balance actors
# Reading and writing tasks reserve no CPU: an actor pool sized to the cluster (the default) holds every CPU, and a
# read or write task waiting for one would never run (measured: 2 actors of 1 CPU on a 2-CPU instance, read_text
# and write_parquet with Ray's default of 1 CPU per task: no progress in 10 minutes). They are I/O and Arrow
# decoding, a small share of a core next to the encoder; their number is capped instead (ACTORS_PER_IO_TASK).
IO_TASK_ARGS = {"num_cpus": 0}
ACTORS_PER_IO_TASK = 8


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or an error naming the extra to install."""
    require_ray("ray.data")
    return require_ray("ray")


# ---- the actor -----------------------------------------------------------------------------------------------------
class EmbedActor:
    """One encoder per Ray actor, loaded once in ``__init__``; called on pyarrow batches of texts.

    ``__call__``: table (n rows, ``text_column`` a string column) -> the same table (less ``text_column`` unless
    ``keep_text``) plus ``output_column``, (n,) fixed-size lists of ``dim`` float32."""

    def __init__(self, model: str, text_column: str, output_column: str, threads: int | None, device: str,
                 engine: EngineOptions | None, attn_implementation: str | None, max_length: int | None,
                 keep_text: bool, embed_kwargs: dict[str, Any]) -> None:
        import torch

        from bertkit.loader import load

        if threads is not None:  # before the load: the engine's own warm-up and any calibration run on them
            torch.set_num_threads(threads)
        options = dataclasses.replace(engine or EngineOptions(), threads=threads)
        self.encoder = load(model, attn_implementation=attn_implementation, device=device, engine=options)
        if max_length is not None:
            self.encoder.max_length = min(max_length, self.encoder.model.config.max_position_embeddings)
        self.text_column, self.output_column, self.keep_text = text_column, output_column, keep_text
        self.embed_kwargs = embed_kwargs
        self.dim = int(self.encoder.sentence.dim(embed_kwargs.get("pooling")))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        if self.text_column not in batch.column_names:
            raise ConfigError(f"no column {self.text_column!r} to embed (columns: {', '.join(batch.column_names)}); "
                              "name the text column with text_column= (--text-column)")
        column = batch.column(self.text_column)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ConfigError(f"column {self.text_column!r} holds {column.type}, expected strings")
        if column.null_count:
            raise ConfigError(f"column {self.text_column!r} has {column.null_count} missing value(s) in a batch of "
                              f"{len(column)} rows (a JSON line without the field, an empty Parquet cell)")
        vectors = self.encoder.embed(column.to_pylist(), None, progress=False, **self.embed_kwargs)  # (n, dim)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        if not self.keep_text:
            batch = batch.drop_columns([self.text_column])
        return batch.append_column(self.output_column, pa.FixedSizeListArray.from_arrays(flat, self.dim))


# ---- the dataset ---------------------------------------------------------------------------------------------------
def embed_dataset(ds: ray.data.Dataset, model: str | os.PathLike[str] | None = None, *, text_column: str = "text",
                  output_column: str = "embedding", batch_size: int = BATCH_TEXTS, workers: int | None = None,
                  threads_per_worker: int | None = None, num_gpus: float | None = None,
                  pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                  prompt_name: str | None = None, prompt: str | None = None, engine: EngineOptions | None = None,
                  attn_implementation: str | None = None, max_length: int | None = None,
                  keep_text: bool = True) -> ray.data.Dataset:
    """``ds`` plus ``output_column``: one float32 vector (a fixed-size list of ``dim``) per row of
    ``text_column``, in ``ds``'s row order. Lazy, as every Ray Dataset: nothing runs until it is consumed.

    model: a built-in name or a directory every node can read (default all-MiniLM-L6-v2); each actor loads it.
    batch_size: texts per actor call (Ray's ``map_batches`` batch; the engine batches within it by tokens).
    workers: actors in the pool (default: one per GPU of the cluster, else CPUs // threads_per_worker).
    threads_per_worker: torch threads, and CPUs Ray reserves, per actor (default 1).
    num_gpus: GPUs per actor; None: 1 where the cluster has a GPU (device cuda), else 0 (CPU).
    pooling .. prompt: as ``Encoder.embed``; engine: ``EngineOptions`` (dtype, int8, token budget); its
    ``threads`` is replaced by ``threads_per_worker``. keep_text: False drops ``text_column`` from the output (in
    the actors: a ``drop_columns`` after them would be one more task needing a CPU the pool may hold).

    Sets ``preserve_order`` on the dataset's ``DataContext`` (shared with ``ds``): without it the actor pool
    returns batches in the order they finish."""
    ray = import_ray()
    if not ray.is_initialized():
        connect()  # what Ray Data would do on first use, with our address probe and quieter logs
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    resources = ray.cluster_resources()
    if num_gpus is None:
        num_gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    threads = threads_per_worker or 1
    if workers is None:
        workers = int(resources.get("GPU", 0) // num_gpus) if num_gpus else int(resources.get("CPU", 1) // threads)
        workers = max(1, workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    kwargs = {"pooling": pooling, "normalize": normalize, "prompt_name": prompt_name, "prompt": prompt}
    out = ds.map_batches(
        EmbedActor, batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads, num_gpus=num_gpus or None,
        fn_constructor_kwargs={"model": str(model) if model is not None else "all-MiniLM-L6-v2",
                               "text_column": text_column, "output_column": output_column, "threads": threads,
                               "device": "cuda" if num_gpus else "cpu", "engine": engine,
                               "attn_implementation": attn_implementation, "max_length": max_length,
                               "keep_text": keep_text, "embed_kwargs": kwargs})
    out.context.execution_options.preserve_order = True
    return out


# ---- files in, files out (`bertkit embed --ray`) ------------------------------------------------------------------
def check_inputs(files: Sequence[Path], text_column: str | None = None) -> str:
    """The one suffix of ``files`` (from ``expand_inputs``), or an error: ``--ray`` reads one format per run."""
    suffixes = sorted({f.suffix.lower() for f in files})
    if len(suffixes) > 1:
        # Ray's union does not concatenate: with preserve_order it takes blocks from its inputs in turn, so the
        # rows of mixed formats would come out interleaved, and the row numbers would no longer be the files'
        raise InputFileError(files[0].parent, f"--ray reads one input format per run, got {', '.join(suffixes)}; "
                                              "embed each format in its own run (or without --ray)")
    if suffixes[0] == ".txt" and text_column is not None:
        raise InputFileError(files[0], "--text-column applies to .jsonl/.csv/.tsv/.parquet input, not .txt")
    return suffixes[0]


def read_inputs(files: Sequence[Path], text_column: str | None = None, io_tasks: int | None = None
                ) -> ray.data.Dataset:
    """The texts of ``files`` as one Ray Dataset with a single string column ``text``, in file order, read by Ray
    Data's readers (each file's texts as ``data/text_stream.py`` numbers them: a .txt line per row, empty lines
    included; blank .jsonl lines skipped; CSV cells may span lines).

    io_tasks: read tasks at a time, each reserving no CPU (``IO_TASK_ARGS``); None: Ray's choice, one CPU each."""
    ray = import_ray()
    import pyarrow as pa
    import pyarrow.csv as pacsv

    column = text_column or "text"
    suffix, paths = check_inputs(files, text_column), [str(f) for f in files]
    # include_paths: the reader adds a "path" column, so that a bad row's error can name its file
    common = {"include_paths": True, **({"concurrency": io_tasks, **IO_TASK_ARGS} if io_tasks else {})}
    if suffix == ".txt":  # utf-8-sig: a byte-order mark is not part of the first text
        ds = ray.data.read_text(paths, drop_empty_lines=False, encoding="utf-8-sig", **common)
    elif suffix == ".jsonl":
        ds = ray.data.read_json(paths, lines=True, file_extensions=None, **common)
    elif suffix in (".csv", ".tsv"):
        ds = ray.data.read_csv(
            paths, file_extensions=None, **common,
            parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}))
    else:
        ds = ray.data.read_parquet(paths, columns=[column], file_extensions=None, **common)
    # One string column for every format. It also makes every block Arrow (read_json gives pandas blocks, and an
    # actor's batcher cannot mix the two). No CPU reserved, as the reads: with Ray's default of one it waited for
    # ever behind an actor pool holding every CPU (measured: 1 actor x 2 threads on 2 CPUs)
    out = ds.map_batches(text_of, batch_format="pyarrow", fn_kwargs={"column": column},
                         **(IO_TASK_ARGS if io_tasks else {}))
    out.context.execution_options.preserve_order = True  # read tasks finish in any order; rows keep the files' order
    return out


def text_of(batch: pa.Table, column: str) -> pa.Table:
    """(n rows, any columns) -> (n rows, one string column ``text``), refusing a missing, non-text or null column
    with the file's name (the reader's ``path`` column)."""
    import pyarrow as pa

    where = batch.column("path")[0].as_py() if "path" in batch.column_names and len(batch) else "input"
    if column not in batch.column_names:
        names = [c for c in batch.column_names if c != "path"]
        raise InputFileError(where, f"no column/field {column!r} (there: {', '.join(names) or 'none'})")
    values = batch.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)):
        raise InputFileError(where, f"{column!r} holds {values.type}, expected strings")
    if values.null_count:
        raise InputFileError(where, f"{values.null_count} row(s) without {column!r} (a missing field, or an empty "
                                    "Parquet cell)")
    return pa.table({"text": values.cast(pa.string())})


def embed_to_parquet(inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                     model: str | os.PathLike[str] | None = None, *, text_column: str | None = None,
                     overwrite: bool = False, with_text: bool = False, max_rows_per_file: int | None = None,
                     address: str | None = None, **embed_options: Any) -> dict[str, Any]:
    """Embed every text of ``inputs`` (files, folders, globs, of one format; on a filesystem every node reads) on
    Ray into a Parquet dataset at ``output_dir`` (on a filesystem every node writes and this process reads: the
    manifest is built from the files' footers); returns the manifest (module docstring: the layout).

    address: the Ray cluster (``ray_cluster.connect``), when this process is not connected yet; a connection made
    here is closed at the end. ``embed_options``: those of ``embed_dataset`` (workers, threads_per_worker, num_gpus,
    pooling, ..., engine). Inputs, output and model are checked before Ray is touched."""
    from bertkit.loader import inspect

    files = expand_inputs(inputs)
    check_inputs(files, text_column)
    out = check_output_dir(output_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputPathError(f"{out} is not empty; start over with --overwrite (a Ray run does not resume)")
    if max_rows_per_file is not None and max_rows_per_file < 1:
        raise ConfigError(f"max_rows_per_file must be >= 1, got {max_rows_per_file}")
    info = inspect(model)  # a bad model name fails here, in this process, not in every actor
    connected = connect(address)
    try:
        return _run(files, out, model, info, text_column, overwrite, with_text, max_rows_per_file, embed_options)
    finally:
        if connected:
            import_ray().shutdown()


def _run(files: list[Path], out: Path, model: str | os.PathLike[str] | None, info: ModelDir, text_column: str | None,
         overwrite: bool, with_text: bool, max_rows_per_file: int | None, embed_options: dict[str, Any]
         ) -> dict[str, Any]:
    if overwrite and out.is_dir():  # only what a run writes: a manifest and Parquet files
        for f in out.iterdir():
            if f.is_file() and (f.name == MANIFEST or f.suffix == ".parquet"):
                f.unlink()
    started = time.perf_counter()
    workers = embed_options.get("workers") or 1
    io_tasks = max(1, -(-workers // ACTORS_PER_IO_TASK))
    ds = embed_dataset(read_inputs(files, text_column, io_tasks), model, text_column="text", keep_text=with_text,
                       **embed_options)
    try:
        ds.write_parquet(str(out), max_rows_per_file=max_rows_per_file, ray_remote_args=dict(IO_TASK_ARGS),
                         concurrency=io_tasks)
    except Exception as e:
        cause = bertkit_cause(e)
        if cause is None:
            raise
        raise cause from None  # a bad row's own message, not three screens of Ray's wrapping
    seconds = time.perf_counter() - started
    listed = ray_output_files(out)
    if not listed:
        raise BertkitError(f"{out}: Ray wrote no Parquet file this process can see; on a cluster, --output must be on "
                           "a filesystem every node shares (NFS and the like)")
    import pyarrow.parquet as pq

    entries, row, dim = [], 0, None
    for f in listed:
        meta = pq.ParquetFile(f).metadata
        entries.append({"file": f.name, "first_row": row, "rows": meta.num_rows})
        row += meta.num_rows
        if dim is None:
            dim = pq.read_schema(f).field("embedding").type.list_size
    engine = embed_options.get("engine")
    settings = {
        "model": str(model) if model is not None else "all-MiniLM-L6-v2", "model_directory": str(info.path),
        "family": info.model_type, "pooling": embed_options.get("pooling"), "normalize": embed_options.get("normalize"),
        "prompt_name": embed_options.get("prompt_name"), "prompt": embed_options.get("prompt"),
        "max_length": embed_options.get("max_length"), "engine": dataclasses.asdict(engine) if engine else None,
        "text_column": text_column, "with_text": with_text,
        "workers": embed_options.get("workers"), "threads_per_worker": embed_options.get("threads_per_worker"),
        "input": [{"file": str(f), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
                  for f, st in ((f, f.stat()) for f in files)],
    }
    manifest = {"format": RAY_FORMAT, "version": RAY_FORMAT_VERSION, "settings": settings, "complete": True,
                "rows": row, "dim": dim, "files": entries}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("embedded %d texts on Ray in %.1f s (%.0f texts/s) into %d Parquet file(s) at %s", row, seconds,
             row / max(seconds, 1e-9), len(entries), out)
    return manifest


def bertkit_cause(e: BaseException) -> BertkitError | None:
    """The BertkitError a Ray task or actor raised (an input file's bad row, a missing column), as one line.

    Ray re-raises it on this side as ``RayTaskError(UserCodeException)``: the original exception object does not
    travel (its ``cause`` is Ray's ``UserCodeException``, with no ``__cause__``), only the worker's formatted
    traceback in the message, whose last ``bertkit...Error: message`` line is the one the user needs."""
    x: BaseException | None = e
    while x is not None:  # raised on this side: itself
        if isinstance(x, BertkitError):
            return x
        x = x.__cause__
    found = re.findall(r"^bertkit\.[\w.]*Error: (.+)$", str(e), flags=re.MULTILINE)
    return BertkitError(found[-1]) if found else None


def ray_output_files(directory: Path) -> list[Path]:
    """The Parquet files Ray's ``write_parquet`` left in ``directory``, in row order.

    Ray names them ``<dataset>_<write>_<task:06>-<i>.parquet`` (``ParquetDatasink``): with ``preserve_order`` write
    task k holds the rows after task k-1's, and ``<i>`` (unpadded) counts the files one task split its rows into,
    so the order is (task, i) as numbers, not the names' sort order (``-10`` would come before ``-2``)."""
    def key(f: Path) -> tuple[int, int, str]:
        m = re.search(r"_(\d+)-(\d+)$", f.stem)
        return (int(m.group(1)), int(m.group(2)), f.name) if m else (-1, -1, f.name)

    return sorted((f for f in directory.iterdir() if f.is_file() and f.suffix == ".parquet"), key=key)


def read_ray_output(directory: str | os.PathLike[str]) -> np.ndarray:
    """The vectors ``embed_to_parquet`` wrote, (rows, dim) float32 in row order (the manifest's file order)."""
    import pyarrow.parquet as pq

    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BertkitError(f"{d}: no readable {MANIFEST} ({e}): not a directory `bertkit embed --ray` wrote") from None
    if manifest.get("format") != RAY_FORMAT:
        raise BertkitError(f"{d / MANIFEST}: format {manifest.get('format')!r}, expected {RAY_FORMAT!r}")
    chunks = []
    for entry in manifest["files"]:
        emb = pq.read_table(d / entry["file"], columns=["embedding"]).column("embedding").combine_chunks()
        if len(emb) != entry["rows"]:
            raise BertkitError(f"{d / entry['file']}: {len(emb)} rows, the manifest says {entry['rows']}")
        chunks.append(emb.flatten().to_numpy().reshape(len(emb), -1))
    return np.concatenate(chunks) if chunks else np.zeros((0, manifest.get("dim") or 0), np.float32)
