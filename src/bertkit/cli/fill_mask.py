"""``bertkit fill-mask MODEL "text with [MASK]" [...] [--top-k 5] [--json]``: the likeliest tokens at each mask.

Needs a model with a trained MLM head (saved as BertForMaskedLM); one without gets a random head and
a warning. ``--json`` prints one list: per text, {"text", "masks": [[{token, token_id, score, sequence}]]}.
"""

from __future__ import annotations

import argparse
import json

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.fill_mask import FillMask


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fill-mask", help="predict the tokens behind [MASK] with a masked language model")
    p.add_argument("model", help="built-in name or local HF directory (BertForMaskedLM)")
    p.add_argument("texts", nargs="+", help="texts containing [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = FillMask.from_pretrained(args.model, engine=engine_from_args(args))(args.texts, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"text": t, "masks": r} for t, r in zip(args.texts, results, strict=True)],
                         ensure_ascii=False))
        return 0
    for text, masks in zip(args.texts, results, strict=True):
        print(text)
        for m, preds in enumerate(masks, start=1):
            if len(masks) > 1:
                print(f"  [MASK] {m}")
            width = max(len(p["token"]) for p in preds)
            for rank, p in enumerate(preds, start=1):
                print(f"  {rank:>3}  {p['token']:<{width}}  {p['score']:.4f}  {p['sequence']}")
    return 0
