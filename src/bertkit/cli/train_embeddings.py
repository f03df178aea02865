"""``bertkit train-embeddings``: a bi-encoder from (query, document) pairs (in-batch and hard negatives,
optionally distilled from a cross-encoder), or from raw text alone (``--mirror``: Mirror-BERT)."""

from __future__ import annotations

import argparse
import json

from bertkit.loader import load
from bertkit.model.pooling import POOLING_MODES
from bertkit.retrieval.data import training_splits
from bertkit.retrieval.search import evaluate_retrieval
from bertkit.train.engine import PRECISIONS, TrainConfig, parse_duration
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-embeddings", help="train a bi-encoder (in-batch negatives, Mirror-BERT, distillation)")
    p.add_argument("--model", default=None, help="starting model (default all-MiniLM-L6-v2)")
    p.add_argument("--dataset", choices=["bbc-news"], help="built-in: BBC titles -> bodies (train / dev / test)")
    p.add_argument("--queries"), p.add_argument("--docs"), p.add_argument("--qrels")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--pooling", choices=POOLING_MODES, default=None,
                   help="pooling to train, saved with the model (default: the starting model's own, else mean)")
    p.add_argument("--query-prompt", default=None,
                   help='prepended to every query, e.g. "query: ", and saved as the model\'s "query" prompt '
                        '(default: the starting model\'s own, if any; "" for none)')
    p.add_argument("--doc-prompt", default=None,
                   help='prepended to every document, saved as the "document" prompt (default: the model\'s own)')
    p.add_argument("--scale", type=float, default=None,
                   help="similarity scale of the loss, 1 / temperature (default 20; 25 with --mirror)")
    p.add_argument("--max-length", type=int, default=None)
    g = p.add_argument_group("hard negatives and distillation")
    g.add_argument("--negatives", type=int, default=0, help="hard negatives per query, mined by --retriever")
    g.add_argument("--retriever", default=None, help="bi-encoder that mines them (default: --model)")
    g.add_argument("--teacher", default=None, help="cross-encoder (bertkit train-reranker output) to distill from")
    g.add_argument("--distill-weight", type=float, default=1.0)
    m = p.add_argument_group("Mirror-BERT (raw text only)")
    m.add_argument("--mirror", action="store_true", help="self-supervised: each sentence is its own positive")
    m.add_argument("--corpus", nargs="+", default=None,
                   help="raw text sources (files, folders, python-docs, bbc-news, tweets); default with "
                        "--dataset/--docs: the sentences of the documents searched")
    m.add_argument("--max-texts", type=int, default=10_000, help="sentences sampled from the corpus")
    m.add_argument("--span", type=int, default=2, help="[MASK]ed tokens per view")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout while training (Mirror-BERT needs some)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=None, help="pairs per batch: each query's negatives "
                                                                "(default 32; 64 with --mirror)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--time-budget", default=None)
    p.add_argument("--resume", action="store_true"), p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    if args.mirror and args.corpus and not (args.dataset or args.queries or args.docs or args.qrels):
        train = dev = test = None  # raw text only: nothing to evaluate on
    else:
        train, dev, test = training_splits(args.dataset, args.queries, args.docs, args.qrels, args.seed)
    if not args.mirror and args.corpus:
        raise ValueError("--corpus is raw text for --mirror")
    if args.mirror and (args.query_prompt is not None or args.doc_prompt is not None):
        raise ValueError("--query-prompt / --doc-prompt are for (query, document) pairs; Mirror-BERT uses none")
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size or (64 if args.mirror else 32), lr=args.lr,
                       seed=args.seed, warmup_ratio=0.1, precision=args.precision,
                       time_budget=parse_duration(args.time_budget), progress=not args.no_progress)
    model = args.model or "all-MiniLM-L6-v2"
    common = {"model": model, "pooling": args.pooling, "training": tcfg, "resume": args.resume,
              "overwrite": args.overwrite}
    if args.mirror:
        from bertkit.retrieval.mirror import corpus_sentences, mirror_bert, raw_sentences

        texts = (corpus_sentences(args.corpus, max_texts=args.max_texts, seed=args.seed) if args.corpus
                 else raw_sentences(train.docs.values(), max_texts=args.max_texts, seed=args.seed))
        result = mirror_bert(args.output, texts, dev, scale=args.scale or 25.0, span=args.span, dropout=args.dropout,
                             max_length=args.max_length or 64, **common)
    else:
        from bertkit.retrieval.biencoder import train_embeddings

        negatives = teacher = None
        if args.teacher and not args.negatives:
            raise ValueError("--teacher needs hard negatives: add --negatives N")
        if args.negatives:
            from bertkit.retrieval.search import mine_hard_negatives

            negatives = mine_hard_negatives(load(args.retriever or model), train, args.negatives, seed=args.seed)
        if args.teacher:
            from bertkit.retrieval.reranker import Reranker

            teacher = Reranker.from_pretrained(args.teacher)  # fp32 scores: the targets, computed once
        result = train_embeddings(args.output, train, dev, scale=args.scale or 20.0, max_length=args.max_length,
                                  query_prompt=args.query_prompt, doc_prompt=args.doc_prompt,
                                  negatives=negatives, teacher=teacher, distill_weight=args.distill_weight, **common)
    report = {"output": str(result.output_dir), "steps": result.state.step, "dev": result.dev}
    if test is not None:
        report["test"] = evaluate_retrieval(load(result.output_dir), test, batch_size=64)
    print(json.dumps(report))
    return 0
