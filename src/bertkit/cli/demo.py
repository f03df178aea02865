"""``bertkit demo``: the main job on the embedded default model (semantic search over BBC News)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="semantic search over BBC News with the embedded default model")
    p.add_argument("--model", default=None, help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--query", action="append", help="a query (repeatable); default: a few examples")
    p.add_argument("-k", type=int, default=3, help="hits per query")
    p.add_argument("--limit", type=int, default=None, help="embed only the first N articles")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertkit.demo import DEFAULT_QUERIES, search_demo

    search_demo(args.model, tuple(args.query) if args.query else DEFAULT_QUERIES, k=args.k, limit=args.limit)
    return 0
