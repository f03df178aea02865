"""``bertkit evaluate-retrieval MODEL``: NDCG@10, MRR@10 and Recall@{1,10,100} of a bi-encoder, exact search."""

from __future__ import annotations

import argparse
import json
import time

from bertkit.encoder import load
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
    metrics = evaluate_retrieval(enc, data, batch_size=args.batch_size)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps({"data": data.source, **metrics}))
    else:
        print(data.describe())
        for k, v in metrics.items():
            print(f"  {k:<10} {v:.4f}" if k not in ("queries", "seconds") else f"  {k:<10} {v:g}")
    return 0
