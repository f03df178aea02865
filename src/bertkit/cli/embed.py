"""``bertkit embed MODEL --input FILE --output FILE``: sentence embeddings of a file of texts.

``--output FILE.npy|FILE.parquet`` writes one file, as the texts fit in memory. ``--output DIR`` streams any
number of inputs (files, folders, globs; .txt/.jsonl/.csv/.tsv/.parquet) into Parquet parts plus a manifest
(``bertkit.distributed.parts``): memory stays flat, ``--resume`` continues a killed run (at most one part is
redone), ``--shard i/n`` embeds a deterministic 1/n of the parts so that n machines split a corpus.
``--ray`` runs the same engine in a pool of Ray actors, on this machine or a cluster (``--ray-address``), reading
and writing with Ray Data into a Parquet dataset and a manifest (``bertkit.distributed.ray_data``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.cli.long_input_args import add_long_input_args, check_stride_flag
from bertkit.data.outputs import check_output_path, write_embeddings
from bertkit.data.text_files import read_texts
from bertkit.distributed.parts import PART_ROWS, embed_to_parts, parse_shard
from bertkit.encoder import POOLINGS
from bertkit.loader import load
from bertkit.model.attention import PATHS
from bertkit.utils.output_paths import check_output_dir, check_output_file

log = logging.getLogger("bertkit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts from a .txt/.jsonl/.csv file into .npy or .parquet")
    p.add_argument("model", nargs="?", default=None,
                   help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--input", "-i", required=True, nargs="+",
                   help=".txt (one text per line), .jsonl or .csv/.tsv; with --output DIR also .parquet, several "
                        "files, folders and globs")
    p.add_argument("--output", "-o", required=True,
                   help=".npy or .parquet (one file), or a directory of Parquet parts and a manifest (streamed)")
    p.add_argument("--text-column", default=None, help="field of .jsonl / column of .csv (default: text)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="override the model's own pooling (default: its sentence-transformers setting, else mean)")
    p.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalized) vectors")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", default=None, help="one of the model's prompts, e.g. query or document")
    prompt.add_argument("--prompt", default=None, help='a literal prompt prepended to every text, e.g. "query: "')
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--attn-implementation", "--path", dest="attn_implementation", choices=PATHS, default="unpadded",
                   help="execution path (transformers' name; --path is its old name)")
    p.add_argument("--with-text", action="store_true", help="parquet only: store the text next to each vector")
    parts = p.add_argument_group("streaming into a directory (--output DIR)")
    parts.add_argument("--part-rows", type=int, default=None,
                       help=f"texts per Parquet part (default {PART_ROWS}; with --ray: at most this many per file)")
    parts.add_argument("--shard", default=None, metavar="i/n",
                       help="embed only the parts numbered i modulo n (0 <= i < n), e.g. 0/4 on the first of four "
                            "machines")
    once = parts.add_mutually_exclusive_group()
    once.add_argument("--resume", action="store_true", help="continue a killed run in --output (same settings)")
    once.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    ray = p.add_argument_group("on Ray Data (--ray; needs pip install 'bertkit[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="embed in a pool of Ray actors, reading and writing with Ray Data, into --output DIR (a "
                          "Parquet dataset and a manifest); one input format per run; no --resume/--shard")
    ray.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                     help="a running cluster's head (`ray start --head` prints it); default: RAY_ADDRESS, else a "
                          "cluster started on this machine, else a new local instance")
    ray.add_argument("--workers", type=int, default=None,
                     help="actors (default: one per GPU where the cluster has GPUs, else its CPUs // --threads)")
    ray.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs per actor (default: 1 where the cluster has GPUs, else 0)")
    add_engine_args(p)
    add_long_input_args(p, pooling=False, saved=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ray:
        return run_on_ray(args)
    for flag in ("ray_address", "workers", "gpus_per_worker"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --ray")
    check_stride_flag(args)
    long_inputs = {"long_inputs": args.long_inputs or "truncate", "stride": args.stride}
    part_rows = PART_ROWS if args.part_rows is None else args.part_rows
    target = Path(args.output)
    # .npy / .parquet: one file (an existing directory of that name is refused below); no suffix, or an existing
    # directory: Parquet parts; any other suffix: the one-file checks name the unsupported format
    streamed = target.suffix.lower() not in (".npy", ".parquet") and (target.is_dir() or not target.suffix)
    if streamed:
        shard = parse_shard(args.shard)  # fail before any work is done
        check_output_dir(args.output)
    else:
        out = check_output_path(args.output)
        check_output_file(out)
        if len(args.input) > 1:
            raise ValueError("several --input files go into a directory: give --output DIR (Parquet parts)")
        for flag in ("shard", "resume", "overwrite", "part_rows"):
            if getattr(args, flag) is not None and getattr(args, flag) is not False:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --output DIR (Parquet parts), not to a single "
                                 "file")
        texts = read_texts(args.input[0], args.text_column)
    enc = load(args.model, attn_implementation=args.attn_implementation, engine=engine_from_args(args))
    if args.max_length is not None:
        enc.max_length = min(args.max_length, enc.model.config.max_position_embeddings)
    normalize = False if args.no_normalize else None
    if streamed:
        embed_to_parts(enc, args.input, args.output, text_column=args.text_column, part_rows=part_rows,
                       shard=shard, resume=args.resume, overwrite=args.overwrite, with_text=args.with_text,
                       pooling=args.pooling, normalize=normalize, prompt_name=args.prompt_name, prompt=args.prompt,
                       **long_inputs)
        return 0
    t0 = time.perf_counter()
    vectors = enc.embed(texts, pooling=args.pooling, normalize=normalize, prompt_name=args.prompt_name,
                        prompt=args.prompt, **long_inputs)
    dt = time.perf_counter() - t0
    write_embeddings(out, vectors, texts if args.with_text and out.suffix == ".parquet" else None)
    log.info("embedded %d texts in %.1f s (%.0f texts/s) -> %s %s", len(texts), dt, len(texts) / max(dt, 1e-9),
             out, vectors.shape)
    return 0


def run_on_ray(args: argparse.Namespace) -> int:
    """``--ray``: the inputs through Ray Data's readers, a pool of encoder actors, Ray's Parquet writer."""
    # imports ray only when called; it connects, and disconnects at the end, only when this process is not
    # connected yet (an in-process caller's Ray stays up)
    from bertkit.distributed.ray_data import embed_to_parquet

    target = Path(args.output)
    if target.suffix.lower() in (".npy", ".parquet") and not target.is_dir():
        raise ValueError(f"--ray writes a directory of Parquet files (and a manifest): give --output DIR, not "
                         f"{target.name}")
    for flag, why in (("shard", "Ray splits the work among its actors itself"),
                      ("resume", "a Ray run is retried by Ray, not resumed; start over with --overwrite")):
        if getattr(args, flag):
            raise ValueError(f"--{flag} does not apply to --ray ({why})")
    if args.long_inputs == "chunk":
        raise ValueError("--long-inputs chunk does not apply to --ray yet: embed without --ray (--output DIR streams "
                         "Parquet parts with it)")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.part_rows is not None and args.part_rows < 1:
        raise ValueError(f"--part-rows must be >= 1, got {args.part_rows}")
    embed_to_parquet(args.input, args.output, args.model, text_column=args.text_column, overwrite=args.overwrite,
                     with_text=args.with_text, max_rows_per_file=args.part_rows, address=args.ray_address,
                     workers=args.workers, threads_per_worker=args.threads, num_gpus=args.gpus_per_worker,
                     pooling=args.pooling, normalize=False if args.no_normalize else None,
                     prompt_name=args.prompt_name, prompt=args.prompt, engine=engine_from_args(args),
                     attn_implementation=args.attn_implementation, max_length=args.max_length)
    return 0
