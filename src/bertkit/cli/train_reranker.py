"""``bertkit train-reranker``: train a cross-encoder on hard negatives mined by a bi-encoder; report first stage vs
re-ranked vs fused (logit + w x cosine, w chosen on dev) metrics of dev and, for the built-in dataset, test.

    bertkit train-reranker --dataset bbc-news -o runs/bbc-reranker --retriever runs/bbc-biencoder --precision bf16
    bertkit train-reranker --recipe bbc-news -o runs/bbc-reranker max_length=128
    torchrun --nproc-per-node 2 -m bertkit.cli.main train-reranker --recipe bbc-news -o runs/bbc-reranker-ddp

A recipe is a YAML file, or the name of one in recipes/reranker/, whose keys are ``RerankerConfig`` fields
(below) and ``TrainConfig`` fields (flat, or under ``training:``). Settings, later wins: the defaults < the
recipe < ``key=value`` overrides < flags given on the command line (one per field: ``--loss``, ``--lr``, ...).
Under torchrun (DDP) ``--batch-size`` groups is the global batch, split over the ranks; rank 0 alone mines the
hard negatives and writes the report.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.cli.recipe_args import TRAIN_FLAGS, add_recipe_command, config_from_args, settings_or_print
from bertkit.errors import ConfigError
from bertkit.hub import DEFAULT_MODEL
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
from bertkit.train.distributed import is_main_process
from bertkit.train.trainer import TrainConfig
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.recipes import config_from_dict

KIND = "reranker"


@dataclass
class RerankerConfig:
    model: str = DEFAULT_MODEL  # the starting model: a built-in name or directory
    retriever: str = DEFAULT_MODEL  # the bi-encoder (name or directory) that mines negatives, the first stage
    dataset: str | None = None  # built-in: BBC titles -> bodies (train / dev / test)
    queries: str | None = None  # your own data: queries, docs and qrels files
    docs: str | None = None
    qrels: str | None = None
    loss: str = "listwise"  # listwise | binary
    negatives: int = 3  # hard negatives per (query, positive) group
    mine_top: int = 50  # negatives come from the retriever's top k
    max_length: int = DEFAULT_MAX_LENGTH  # tokens of a (query, document) pair
    dev_top: int = 20  # re-rank this many per dev query during training
    rerank_top: int = 50  # re-rank this many per query in the final report
    # batch_size counts queries (each with 1 + negatives pairs); the lr was measured on MiniLM-L6 (see --lr)
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, batch_size=4, lr=1.5e-4,
                                                                      warmup_ratio=0.1))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RerankerConfig:
        cfg = config_from_dict(cls, d)
        for name in ("negatives", "mine_top", "dev_top", "rerank_top"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"setting {name} (--{name.replace('_', '-')}) must be >= 1, got {getattr(cfg, name)}")
        return cfg


FLAGS: dict[str, dict] = {
    **TRAIN_FLAGS,
    "dataset": dict(choices=["bbc-news"]), "loss": dict(choices=LOSSES),
    "batch_size": dict(help="queries per batch (each with 1 + negatives pairs)"),
    "lr": dict(help="measured on MiniLM-L6: 5e-5 barely moves in 60 steps, 3e-4 can collapse to constant scores"),
    "precision": dict(TRAIN_FLAGS["precision"], help="training and scoring: auto (bf16 on CUDA, fp32 on CPU), "
                      "fp32 or bf16 autocast"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_recipe_command(sub, "train-reranker", "train a cross-encoder re-ranker on mined hard negatives", __doc__,
                       RerankerConfig, FLAGS, KIND, "bbc-news", run)


def config_from(args: argparse.Namespace) -> RerankerConfig:
    """The run's settings: the recipe < key=value overrides < flags given."""
    return config_from_args(args, RerankerConfig, KIND)


def run(args: argparse.Namespace) -> int:
    cfg = settings_or_print(args, config_from)
    if cfg is None:
        return 0
    train, dev, test = training_splits(cfg.dataset, cfg.queries, cfg.docs, cfg.qrels, cfg.training.seed)
    result = train_reranker(args.output, train, dev, model=cfg.model, retriever=cfg.retriever, loss=cfg.loss,
                            negatives=cfg.negatives, mine_top=cfg.mine_top, max_length=cfg.max_length,
                            dev_top=cfg.dev_top, training=cfg.training, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # under torchrun: rank 0 evaluates and writes the report
        return 0
    report: dict = {"output": str(result.output_dir), "steps": result.state.step, "stopped": result.state.stopped,
                    "best_step": result.state.best_step, "train_seconds": round(result.state.elapsed, 1)}
    if dev is not None:
        report.update(evaluate_splits(cfg, result.output_dir, result.doc_vectors, train, dev, test))
    atomic_write_text(result.output_dir / "results.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def evaluate_splits(cfg: RerankerConfig, output_dir: Path, doc_vectors: np.ndarray | None, train: RetrievalData,
                    dev: RetrievalData, test: RetrievalData | None) -> dict:
    """First stage vs re-ranked vs fused top ``--rerank-top`` on dev (where the fusion weight is chosen) and test."""
    reranker = Reranker.from_pretrained(output_dir, dtype=cfg.training.precision)
    retriever = load(cfg.retriever)
    if doc_vectors is None:  # the splits share train's collection: embed it once (training did, unless resumed)
        doc_vectors = embed_side(retriever, list(train.docs.values()), "document")
    depth = max(100, cfg.rerank_top)

    def first_stage(data: RetrievalData) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
        return retrieve_scored(retriever, data, depth, doc_vectors if list(data.docs) == list(train.docs) else None)

    out = {"dev": evaluate_reranking(retriever, reranker, dev, cfg.rerank_top, first_stage(dev), 64, FUSION_WEIGHTS)}
    sweep = out["dev"].pop("fused")
    weight = max(FUSION_WEIGHTS, key=lambda w: (sweep[str(w)]["ndcg@10"], -w))  # ties: the smaller weight
    out["dev"]["fused"] = {"weight": weight, **sweep[str(weight)]}
    out["dev"]["fusion_sweep"] = {w: round(m["ndcg@10"], 4) for w, m in sweep.items()}
    if test is not None:
        out["test"] = evaluate_reranking(retriever, reranker, test, cfg.rerank_top, first_stage(test), 64, (weight,))
        out["test"]["fused"] = {"weight": weight, **out["test"]["fused"][str(weight)]}
    cfg = output_dir / CONFIG_FILE  # the weight dev chose, for users who fuse
    atomic_write_text(cfg, json.dumps({**json.loads(cfg.read_text(encoding="utf-8")), "fusion_weight": weight},
                                      indent=2) + "\n")
    return out
