"""``bertkit demo``: the main job on the embedded default model.

1. semantic search over BBC News (a vector index; re-ranked where a cross-encoder was trained);
2. fine-tuning a topic classifier on it within a time budget.
"""

from __future__ import annotations

import argparse

from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="semantic search over BBC News, then fine-tune a topic classifier")
    p.add_argument("--model", default=None, help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--query", action="append", help="a query (repeatable); default: a few examples")
    p.add_argument("-k", type=int, default=3, help="hits per query")
    p.add_argument("--limit", type=int, default=None, help="embed only the first N articles")
    p.add_argument("--index", default="runs/demo-index", help="where the BBC index is saved (and reused)")
    p.add_argument("--reranker", default="runs/bbc-reranker",
                   help="cross-encoder that re-ranks the top 20, where it exists (bertkit train-reranker -o DIR)")
    p.add_argument("--skip-search", action="store_true", help="only the fine-tuning part")
    p.add_argument("--skip-finetune", action="store_true", help="only the search part")
    p.add_argument("--time-budget", default="4m", help="fine-tuning wall-clock budget (default 4m)")
    p.add_argument("--output", default="runs/bbc-news-demo", help="fine-tuning run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertkit.demo import DEFAULT_QUERIES, finetune_demo, search_demo

    if not args.skip_finetune:
        check_output_dir(args.output)  # fail before any work, naming the path
    if not args.skip_search:
        search_demo(args.model, tuple(args.query) if args.query else DEFAULT_QUERIES, k=args.k, limit=args.limit,
                    index_dir=args.index, reranker=args.reranker)
    if not args.skip_finetune:
        finetune_demo(args.output, args.time_budget, args.model)
    return 0
