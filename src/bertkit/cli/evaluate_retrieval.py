"""``bertkit evaluate-retrieval MODEL``: NDCG@10, MRR@10 and Recall@{1,10,100} of a bi-encoder, exact search."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bertkit.encoder import Encoder
from bertkit.loader import load
from bertkit.model.pooling import POOLING_MODES
from bertkit.retrieval.data import SPLITS, bbc_retrieval, load_retrieval_files
from bertkit.retrieval.search import evaluate_retrieval


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-retrieval", help="retrieval metrics of an embedding model on queries/docs/qrels")
    p.add_argument("model", nargs="?", default=None, help="built-in name or local HF directory")
    p.add_argument("--dataset", choices=["bbc-news"], help="built-in benchmark: BBC titles -> article bodies")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--queries", help=".jsonl (_id, text) or .tsv (id<TAB>text)")
    p.add_argument("--docs", help=".jsonl (_id, [title,] text) or .tsv")
    p.add_argument("--qrels", help=".tsv: query-id<TAB>corpus-id<TAB>score")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--batch-size", type=int, default=32)
    add_prompt_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = (args.queries, args.docs, args.qrels)
    if args.dataset and any(files):
        raise ValueError("give either --dataset or --queries/--docs/--qrels, not both")
    if args.dataset:
        data = bbc_retrieval(args.split)
    elif all(files):
        data = load_retrieval_files(*files)
    else:
        raise ValueError("give --dataset bbc-news, or all three of --queries, --docs and --qrels")
    enc = load(args.model)
    if args.max_length is not None:
        enc.max_length = min(args.max_length, enc.model.config.max_position_embeddings)
    t0 = time.perf_counter()
    metrics = evaluate_retrieval(enc, data, batch_size=args.batch_size, **prompts_from_args(enc, args))
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps({"data": data.source, **metrics}))
    else:
        print(data.describe())
        for k, v in metrics.items():
            print(f"  {k:<10} {v:.4f}" if k not in ("queries", "seconds") else f"  {k:<10} {v:g}")
    return 0


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    """--pooling and each side's prompt (by name or literal); left out: the model's own."""
    p.add_argument("--pooling", choices=POOLING_MODES, default=None, help="override the model's own pooling")
    for side, default in (("query", "its 'query' prompt"), ("doc", "its 'document' (or 'passage') prompt")):
        g = p.add_mutually_exclusive_group()
        g.add_argument(f"--{side}-prompt-name", default=None, help=f"one of the model's prompts (default: {default})")
        g.add_argument(f"--{side}-prompt", default=None, help='a literal prompt, e.g. "query: " ("" for none)')


def prompts_from_args(enc: Encoder, args: argparse.Namespace) -> dict[str, Any]:
    """evaluate_retrieval's query_prompt / doc_prompt / pooling from add_prompt_args' flags (names resolved)."""
    s = enc.sentence
    return {"query_prompt": s.role_prompt("query", args.query_prompt_name, args.query_prompt),
            "doc_prompt": s.role_prompt("document", args.doc_prompt_name, args.doc_prompt), "pooling": args.pooling}
