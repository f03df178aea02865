"""The ``bertkit`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import logging
import sys

from bertkit.cli import (
    classify_prompt,
    compress,
    data,
    demo,
    distill,
    embed,
    evaluate,
    evaluate_retrieval,
    explain,
    export,
    fill_mask,
    finetune,
    index,
    info,
    merge,
    predict,
    pretrain,
    score,
    serve,
    tokenizer,
    train_embeddings,
    train_reranker,
)
from bertkit.errors import BertkitError

COMMANDS = {"info": info, "embed": embed, "finetune": finetune, "evaluate": evaluate, "predict": predict,
            "data": data, "demo": demo, "tokenizer": tokenizer, "pretrain": pretrain,
            "evaluate-retrieval": evaluate_retrieval, "index": index, "export": export,
            "fill-mask": fill_mask, "score": score, "serve": serve,
            "train-embeddings": train_embeddings, "train-reranker": train_reranker, "distill": distill,
            "compress": compress, "merge": merge, "classify-prompt": classify_prompt, "explain": explain}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description="A toolkit for BERT-family text encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (BertkitError, ValueError, TypeError, FloatingPointError) as e:
        # User-facing errors carry their own message; no traceback from deep inside torch.
        if args.verbose:
            raise
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission lost mid-run: the message names the path
        if args.verbose:
            raise
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line and the conventional 128 + SIGINT, not a traceback from wherever the job was.
        # Outputs are written atomically, so nothing half-written is left behind.
        if args.verbose:
            raise
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
