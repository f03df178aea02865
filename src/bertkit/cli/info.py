"""``bertkit info MODEL``: architecture, size, vocabulary and execution path."""

from __future__ import annotations

import argparse
import json

from bertkit.loader import load
from bertkit.model.attention import PATHS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model")
    p.add_argument("model", nargs="?", default=None,
                   help="built-in name or local HF directory (default all-MiniLM-L6-v2)")
    p.add_argument("--attn-implementation", "--path", dest="attn_implementation", choices=PATHS, default="unpadded",
                   help="execution path to report (transformers' name; --path is its old name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = load(args.model, attn_implementation=args.attn_implementation).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f} M)"
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0
