"""``bertkit train-embeddings``: a bi-encoder from (query, document) pairs (in-batch and hard negatives,
optionally distilled from a cross-encoder), or from raw text alone (``--mirror``: Mirror-BERT).

    bertkit train-embeddings --dataset bbc-news -o runs/bbc-biencoder --precision bf16
    bertkit train-embeddings --recipe bbc-news -o runs/bbc-distilled negatives=3 retriever=runs/bbc-biencoder
    bertkit train-embeddings --mirror --model MODEL -o runs/mirror --corpus notes.txt
    bertkit train-embeddings --dataset bbc-news -o runs/bbc-big --batch-size 1024 --mini-batch-size 32
    torchrun --nproc-per-node 2 -m bertkit.cli.main train-embeddings --dataset bbc-news -o runs/bbc-ddp

A recipe is a YAML file, or the name of one in recipes/embeddings/, whose keys are ``EmbeddingsConfig`` fields
(below) and ``TrainConfig`` fields (flat, or under ``training:``). Settings, later wins: the defaults < the
recipe < ``key=value`` overrides < flags given on the command line (one per field: ``--negatives``, ``--lr``,
...; ``--corpus`` takes every value up to the next flag).

``--mini-batch-size N`` is GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss): the contrastive
batch of ``--batch-size`` pairs is embedded N sequences at a time, the same gradient in the memory of N. Under
torchrun (DDP) ``--batch-size`` is the global batch: each rank's queries are scored against every rank's
documents, so N ranks x B pairs train as one process with N x B.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from bertkit.cli.recipe_args import TRAIN_FLAGS, add_recipe_command, recipe_settings, settings_or_print
from bertkit.hub import DEFAULT_MODEL
from bertkit.loader import load
from bertkit.model.pooling import POOLING_MODES
from bertkit.retrieval.data import training_splits
from bertkit.retrieval.search import evaluate_retrieval
from bertkit.train.distributed import is_main_process
from bertkit.train.trainer import TrainConfig
from bertkit.utils.recipes import config_from_dict

KIND = "embeddings"


@dataclass
class EmbeddingsConfig:
    model: str = DEFAULT_MODEL  # the starting model: a built-in name or directory
    dataset: str | None = None  # built-in: BBC titles -> bodies (train / dev / test)
    queries: str | None = None  # your own data: queries, docs and qrels files
    docs: str | None = None
    qrels: str | None = None
    pooling: str | None = None  # pooling to train, saved with the model (None: the starting model's own, else mean)
    query_prompt: str | None = None  # prepended to every query, saved as the "query" prompt (None: the model's own)
    doc_prompt: str | None = None  # prepended to every document, saved as the "document" prompt
    scale: float | None = None  # similarity scale of the loss, 1 / temperature (None: 20; 25 with mirror)
    max_length: int | None = None  # tokens (None: the model's own; 64 with mirror)
    # hard negatives and distillation
    negatives: int = 0  # hard negatives per query, mined by retriever
    retriever: str | None = None  # the bi-encoder that mines them (None: model)
    teacher: str | None = None  # a cross-encoder (bertkit train-reranker output) to distill from
    distill_weight: float = 1.0
    # Mirror-BERT (raw text only)
    mirror: bool = False  # self-supervised: each sentence is its own positive
    corpus: list[str] | None = None  # raw text: files, folders, python-docs, bbc-news, tweets (None: the docs')
    max_texts: int = 10_000  # sentences sampled from the corpus
    span: int = 2  # [MASK]ed tokens per view
    dropout: float = 0.1  # dropout while training (Mirror-BERT needs some)
    # GradCache: embed the batch this many sequences at a time (bounded memory, same gradient); None: all at once
    mini_batch_size: int | None = None
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, lr=2e-5, warmup_ratio=0.1))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingsConfig:
        return config_from_dict(cls, d)


FLAGS: dict[str, dict] = {
    **TRAIN_FLAGS,
    "dataset": dict(choices=["bbc-news"]), "pooling": dict(choices=POOLING_MODES),
    "query_prompt": dict(help='prepended to every query, e.g. "query: ", and saved as the model\'s "query" prompt '
                              '(default: the starting model\'s own, if any; "" for none)'),
    "corpus": dict(action="store", nargs="+"),
    "batch_size": dict(help="pairs per batch: each query's negatives (default 32; 64 with --mirror); under "
                            "torchrun the global batch, every rank's queries against all of its documents"),
    "mini_batch_size": dict(help="GradCache, as sentence-transformers' CachedMultipleNegativesRankingLoss: embed the "
                                 "batch N sequences at a time, the same gradient in bounded memory (e.g. "
                                 "--batch-size 1024 --mini-batch-size 32)"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_recipe_command(sub, "train-embeddings", "train a bi-encoder (in-batch negatives, Mirror-BERT, distillation)",
                       __doc__, EmbeddingsConfig, FLAGS, KIND, "bbc-news", run)


def config_from(args: argparse.Namespace) -> EmbeddingsConfig:
    """The run's settings: the recipe < key=value overrides < flags given."""
    d = recipe_settings(args, EmbeddingsConfig, KIND)
    if d.get("mirror") is True and "batch_size" not in d.get("training", {}):
        d.setdefault("training", {})["batch_size"] = 64  # Mirror-BERT's own default, unless one was set
    return EmbeddingsConfig.from_dict(d)


def run(args: argparse.Namespace) -> int:
    cfg = settings_or_print(args, config_from)
    if cfg is None:
        return 0
    seed = cfg.training.seed
    if cfg.mirror and cfg.corpus and not (cfg.dataset or cfg.queries or cfg.docs or cfg.qrels):
        train = dev = test = None  # raw text only: nothing to evaluate on
    else:
        train, dev, test = training_splits(cfg.dataset, cfg.queries, cfg.docs, cfg.qrels, seed)
    if not cfg.mirror and cfg.corpus:
        raise ValueError("--corpus is raw text for --mirror")
    if cfg.mirror and (cfg.query_prompt is not None or cfg.doc_prompt is not None):
        raise ValueError("--query-prompt / --doc-prompt are for (query, document) pairs; Mirror-BERT uses none")
    common = {"model": cfg.model, "pooling": cfg.pooling, "mini_batch_size": cfg.mini_batch_size,
              "training": cfg.training, "resume": args.resume, "overwrite": args.overwrite}
    if cfg.mirror:
        from bertkit.retrieval.mirror import corpus_sentences, mirror_bert, raw_sentences

        texts = (corpus_sentences(cfg.corpus, max_texts=cfg.max_texts, seed=seed) if cfg.corpus
                 else raw_sentences(train.docs.values(), max_texts=cfg.max_texts, seed=seed))
        result = mirror_bert(args.output, texts, dev, scale=cfg.scale or 25.0, span=cfg.span, dropout=cfg.dropout,
                             max_length=cfg.max_length or 64, **common)
    else:
        from bertkit.retrieval.biencoder import train_embeddings

        negatives = teacher = None
        if cfg.teacher and not cfg.negatives:
            raise ValueError("--teacher needs hard negatives: add --negatives N")
        if cfg.negatives:
            from bertkit.retrieval.search import mine_hard_negatives

            negatives = mine_hard_negatives(load(cfg.retriever or cfg.model), train, cfg.negatives, seed=seed)
        if cfg.teacher:
            from bertkit.retrieval.reranker import Reranker

            teacher = Reranker.from_pretrained(cfg.teacher)  # fp32 scores: the targets, computed once
        result = train_embeddings(args.output, train, dev, scale=cfg.scale or 20.0, max_length=cfg.max_length,
                                  query_prompt=cfg.query_prompt, doc_prompt=cfg.doc_prompt,
                                  negatives=negatives, teacher=teacher, distill_weight=cfg.distill_weight, **common)
    if not is_main_process():  # under torchrun: rank 0 evaluates and reports
        return 0
    report = {"output": str(result.output_dir), "steps": result.state.step, "dev": result.dev}
    if test is not None:
        report["test"] = evaluate_retrieval(load(result.output_dir), test, batch_size=64)
    print(json.dumps(report))
    return 0
