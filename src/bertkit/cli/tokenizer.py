"""``bertkit tokenizer train --corpus SRC ... --vocab-size N --output DIR``: a new BERT WordPiece vocabulary."""

from __future__ import annotations

import argparse

from bertkit.data.corpus import BUILTIN_CORPORA
from bertkit.data.tokenizer import Tokenizer
from bertkit.data.wordpiece import train_wordpiece
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a WordPiece vocabulary for pretraining")
    actions = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train a BERT WordPiece tokenizer on text files or a built-in corpus")
    train.add_argument("--corpus", nargs="+", required=True, metavar="PATH_OR_NAME",
                       help=f".txt/.md files (one document each), .jsonl (field text), folders of them, or "
                            f"built-in corpora: {', '.join(BUILTIN_CORPORA)}")
    train.add_argument("--vocab-size", type=int, required=True, help="tokens wanted, rounded up to --round-to")
    train.add_argument("--output", "-o", required=True, help="folder for tokenizer.json, vocab.txt and configs")
    train.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                       help="lower-case and strip accents (default: yes)")
    train.add_argument("--round-to", type=int, default=64,
                       help="round the vocabulary size up to a multiple of this (default 64; 1 disables)")
    train.add_argument("--min-frequency", type=int, default=2, help="rarest pair the trainer merges (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    out = train_wordpiece(args.corpus, args.vocab_size, args.output, lowercase=args.lowercase,
                          round_to=args.round_to, min_frequency=args.min_frequency)
    print(f"vocabulary  {Tokenizer.from_dir(out).vocab_size:,} tokens")
    print(f"saved       {out}")
    return 0
