"""``bertkit embed MODEL --input FILE --output FILE``: sentence embeddings of a file of texts."""

from __future__ import annotations

import argparse
import logging
import time

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.data.outputs import check_output_path, write_embeddings
from bertkit.data.text_files import read_texts
from bertkit.encoder import POOLINGS
from bertkit.loader import load
from bertkit.model.attention import PATHS
from bertkit.utils.output_paths import check_output_file

log = logging.getLogger("bertkit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts from a .txt/.jsonl/.csv file into .npy or .parquet")
    p.add_argument("model", nargs="?", default=None,
                   help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--input", "-i", required=True, help=".txt (one text per line), .jsonl or .csv/.tsv")
    p.add_argument("--output", "-o", required=True, help=".npy or .parquet")
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
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output)  # fail before any work is done
    check_output_file(out)
    texts = read_texts(args.input, args.text_column)
    enc = load(args.model, attn_implementation=args.attn_implementation, engine=engine_from_args(args))
    if args.max_length is not None:
        enc.max_length = min(args.max_length, enc.model.config.max_position_embeddings)
    t0 = time.perf_counter()
    vectors = enc.embed(texts, pooling=args.pooling, normalize=False if args.no_normalize else None,
                        prompt_name=args.prompt_name, prompt=args.prompt)
    dt = time.perf_counter() - t0
    write_embeddings(out, vectors, texts if args.with_text and out.suffix == ".parquet" else None)
    log.info("embedded %d texts in %.1f s (%.0f texts/s) -> %s %s", len(texts), dt, len(texts) / max(dt, 1e-9),
             out, vectors.shape)
    return 0
