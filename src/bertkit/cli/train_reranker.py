"""``bertkit train-reranker``: train a cross-encoder on hard negatives mined by a bi-encoder; report first stage vs
re-ranked vs fused (logit + w x cosine, w chosen on dev) metrics of dev and, for the built-in dataset, test."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bertkit.loader import load
from bertkit.retrieval.data import RetrievalData, training_splits
from bertkit.retrieval.reranker import (
    CONFIG_FILE,
    DEFAULT_MAX_LENGTH,
    FUSION_WEIGHTS,
    LOSSES,
    Reranker,
    evaluate_reranking,
    train_reranker,
)
from bertkit.retrieval.search import embed_side, retrieve_scored
from bertkit.train.engine import PRECISIONS, TrainConfig, parse_duration
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-reranker", help="train a cross-encoder re-ranker on mined hard negatives")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="starting model (default all-MiniLM-L6-v2)")
    p.add_argument("--retriever", default="all-MiniLM-L6-v2",
                   help="bi-encoder (name or directory) that mines negatives and gives the first stage")
    p.add_argument("--dataset", choices=["bbc-news"], help="built-in: BBC titles -> bodies (train / dev / test)")
    p.add_argument("--queries"), p.add_argument("--docs"), p.add_argument("--qrels")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--loss", choices=LOSSES, default="listwise")
    p.add_argument("--negatives", type=int, default=3, help="hard negatives per (query, positive) group")
    p.add_argument("--mine-top", type=int, default=50, help="negatives come from the retriever's top k")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens of a (query, document) pair")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=4, help="queries per batch (each with 1 + negatives pairs)")
    p.add_argument("--lr", type=float, default=1.5e-4, help="measured on MiniLM-L6: 5e-5 barely moves in 60 steps, "
                   "3e-4 can collapse to constant scores")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-every", type=int, default=None, help="optimizer steps (default: each epoch end)")
    p.add_argument("--dev-top", type=int, default=20, help="re-rank this many per dev query during training")
    p.add_argument("--rerank-top", type=int, default=50, help="re-rank this many per query in the final report")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training and scoring: auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16 autocast")
    p.add_argument("--time-budget", default=None)
    p.add_argument("--resume", action="store_true"), p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    train, dev, test = training_splits(args.dataset, args.queries, args.docs, args.qrels, args.seed)
    for name in ("negatives", "mine_top", "dev_top", "rerank_top"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_ratio=0.1,
                       eval_every=args.eval_every, precision=args.precision,
                       time_budget=parse_duration(args.time_budget), progress=not args.no_progress)
    result = train_reranker(args.output, train, dev, model=args.model, retriever=args.retriever, loss=args.loss,
                            negatives=args.negatives, mine_top=args.mine_top, max_length=args.max_length,
                            dev_top=args.dev_top, training=tcfg, resume=args.resume, overwrite=args.overwrite)
    report: dict = {"output": str(result.output_dir), "steps": result.state.step, "stopped": result.state.stopped,
                    "best_step": result.state.best_step, "train_seconds": round(result.state.elapsed, 1)}
    if dev is not None:
        report.update(evaluate_splits(args, result.output_dir, result.doc_vectors, train, dev, test))
    atomic_write_text(result.output_dir / "results.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def evaluate_splits(args: argparse.Namespace, output_dir: Path, doc_vectors: np.ndarray | None, train: RetrievalData,
                    dev: RetrievalData, test: RetrievalData | None) -> dict:
    """First stage vs re-ranked vs fused top ``--rerank-top`` on dev (where the fusion weight is chosen) and test."""
    reranker = Reranker.from_pretrained(output_dir, dtype=args.precision)
    retriever = load(args.retriever)
    if doc_vectors is None:  # the splits share train's collection: embed it once (training did, unless resumed)
        doc_vectors = embed_side(retriever, list(train.docs.values()), "document")
    depth = max(100, args.rerank_top)

    def first_stage(data: RetrievalData) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
        return retrieve_scored(retriever, data, depth, doc_vectors if list(data.docs) == list(train.docs) else None)

    out = {"dev": evaluate_reranking(retriever, reranker, dev, args.rerank_top, first_stage(dev), 64, FUSION_WEIGHTS)}
    sweep = out["dev"].pop("fused")
    weight = max(FUSION_WEIGHTS, key=lambda w: (sweep[str(w)]["ndcg@10"], -w))  # ties: the smaller weight
    out["dev"]["fused"] = {"weight": weight, **sweep[str(weight)]}
    out["dev"]["fusion_sweep"] = {w: round(m["ndcg@10"], 4) for w, m in sweep.items()}
    if test is not None:
        out["test"] = evaluate_reranking(retriever, reranker, test, args.rerank_top, first_stage(test), 64, (weight,))
        out["test"]["fused"] = {"weight": weight, **out["test"]["fused"][str(weight)]}
    cfg = output_dir / CONFIG_FILE  # the weight dev chose, for users who fuse
    atomic_write_text(cfg, json.dumps({**json.loads(cfg.read_text(encoding="utf-8")), "fusion_weight": weight},
                                      indent=2) + "\n")
    return out
