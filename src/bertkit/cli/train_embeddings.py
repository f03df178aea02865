"""``bertkit train-embeddings``: fine-tune a bi-encoder with in-batch negatives on (query, document) pairs."""

from __future__ import annotations

import argparse
import json

from bertkit.encoder import load
from bertkit.retrieval.biencoder import train_embeddings
from bertkit.retrieval.data import bbc_retrieval, load_retrieval_files
from bertkit.retrieval.search import evaluate_retrieval
from bertkit.train.engine import TrainConfig, parse_duration


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-embeddings", help="train a bi-encoder (multiple-negatives ranking loss)")
    p.add_argument("--model", default=None, help="starting model (default all-MiniLM-L6-v2)")
    p.add_argument("--dataset", choices=["bbc-news"], help="built-in: BBC titles -> bodies (train / dev / test)")
    p.add_argument("--queries"), p.add_argument("--docs"), p.add_argument("--qrels")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    p.add_argument("--scale", type=float, default=20.0, help="similarity scale of the loss (1 / temperature)")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32, help="pairs per batch: each query's negatives")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--time-budget", default=None)
    p.add_argument("--resume", action="store_true"), p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dataset:
        train, dev, test = (bbc_retrieval(s, seed=args.seed) for s in ("train", "dev", "test"))
    elif args.queries and args.docs and args.qrels:
        train, dev, test = load_retrieval_files(args.queries, args.docs, args.qrels), None, None
    else:
        raise ValueError("give --dataset bbc-news, or all three of --queries, --docs and --qrels")
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_ratio=0.1,
                       time_budget=parse_duration(args.time_budget), progress=not args.no_progress)
    result = train_embeddings(args.output, train, dev, model=args.model or "all-MiniLM-L6-v2", pooling=args.pooling,
                              scale=args.scale, max_length=args.max_length, training=tcfg, resume=args.resume,
                              overwrite=args.overwrite)
    report = {"output": str(result.output_dir), "steps": result.state.step, "dev": result.dev}
    if test is not None:
        report["test"] = evaluate_retrieval(load(result.output_dir), test, batch_size=64)
    print(json.dumps(report))
    return 0
