"""``bertkit score --candidates FILE --references FILE``: BERTScore of line-aligned text pairs."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bertkit.data.text_files import read_texts
from bertkit.errors import InputFileError
from bertkit.loader import load
from bertkit.retrieval.bertscore import bertscore
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.output_paths import check_output_file

log = logging.getLogger("bertkit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="BERTScore precision/recall/F1 of candidate texts against references")
    p.add_argument("--candidates", "-c", required=True, help=".txt (one text per line), .jsonl or .csv/.tsv")
    p.add_argument("--references", "-r", required=True, help="same format; row i is the reference of candidate i")
    p.add_argument("--model", "-m", default=None, help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--layer", type=int, default=None, help="hidden layer 1..num_layers (default: last)")
    p.add_argument("--idf", action="store_true", help="weight tokens by idf over the references")
    p.add_argument("--baseline", type=parse_baseline, default=None, metavar="P,R,F",
                   help="rescale each score s to (s - b) / (1 - b); see bertkit.retrieval.bertscore.estimate_baseline")
    p.add_argument("--text-column", default=None, help="field of .jsonl / column of .csv (default: text)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the means as one JSON object")
    p.add_argument("--output", "-o", default=None, help="write per-pair scores to this .jsonl file")
    p.set_defaults(func=run)


def parse_baseline(value: str) -> tuple[float, float, float]:
    try:
        b = tuple(float(x) for x in value.split(","))
    except ValueError:
        b = ()
    if len(b) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers P,R,F, got {value!r}")
    return b  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_file(args.output, (".jsonl",))  # fail before any work, naming the path
    if args.output is not None and Path(args.output).suffix.lower() != ".jsonl":
        raise ValueError(f"{args.output}: per-pair scores are written as .jsonl")
    candidates = read_texts(args.candidates, args.text_column)
    references = read_texts(args.references, args.text_column)
    if len(candidates) != len(references):
        raise InputFileError(args.candidates, f"has {len(candidates)} texts but {args.references} has "
                             f"{len(references)}; row i of each must form a pair")
    if not candidates:
        raise InputFileError(args.candidates, "no texts to score")
    enc = load(args.model)
    t0 = time.perf_counter()
    result = bertscore(candidates, references, enc, layer=args.layer, idf=args.idf, baseline=args.baseline,
                       batch_size=args.batch_size)
    log.info("scored %d pairs in %.1f s", len(candidates), time.perf_counter() - t0)
    if args.output is not None:
        rows = (json.dumps({"precision": float(p), "recall": float(r), "f1": float(f)})
                for p, r, f in zip(result.precision, result.recall, result.f1, strict=True))
        atomic_write_text(args.output, "".join(row + "\n" for row in rows))
    means = {"precision": result.mean_precision, "recall": result.mean_recall, "f1": result.mean_f1}
    if args.json:
        print(json.dumps({**means, "pairs": len(candidates), "model": enc.name,
                          "layer": args.layer or enc.model.config.num_hidden_layers, "idf": args.idf,
                          "baseline": list(args.baseline) if args.baseline else None}))
    else:
        print(f"P {means['precision']:.4f}  R {means['recall']:.4f}  F1 {means['f1']:.4f}  ({len(candidates)} pairs)")
    return 0
