"""``bertkit evaluate DIR (--dataset NAME [--split test] | --data FILE) [--json]``: metrics of a task model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.cli.long_input_args import add_long_input_args, long_input_kwargs
from bertkit.data.tasks import check_labels_among, load_builtin, read_task_file
from bertkit.loader import load_task_model
from bertkit.train.finetune import CONFIG_FILE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a fine-tuned model on a dataset split or a labelled file")
    p.add_argument("model_dir", help="directory written by `bertkit finetune` (or a transformers BertFor* model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="built-in dataset name")
    src.add_argument("--data", help="labelled file (.csv/.tsv/.jsonl/.parquet; NER also .conll)")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"), help="built-in split (default test)")
    p.add_argument("--seed", type=int, default=None,
                   help="split seed (default: the one the model was trained with, else 42)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--label-separator", default="|")
    add_engine_args(p)
    add_long_input_args(p)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object of metrics on stdout")
    p.set_defaults(func=run)


def training_seed(model_dir: Path) -> int:
    f = model_dir / CONFIG_FILE
    if f.is_file():
        return int(json.loads(f.read_text(encoding="utf-8")).get("training", {}).get("seed", 42))
    return 42


def run(args: argparse.Namespace) -> int:
    model = load_task_model(args.model_dir, engine=engine_from_args(args))
    if args.dataset:
        seed = args.seed if args.seed is not None else training_seed(Path(args.model_dir))
        data = load_builtin(args.dataset, seed=seed)[args.split]
    else:
        data = read_task_file(args.data, model.task, text_column=args.text_column,
                              text_pair_column=args.text_pair_column, label_column=args.label_column,
                              label_separator=args.label_separator)
    check_labels_among(data, model.labels, f"not among the model's labels ({', '.join(model.labels)})",
                       "the model cannot predict them")
    metrics = model.evaluate(data, **long_input_kwargs(args))
    metrics = {"examples": len(data), **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{data.source}: {len(data)} examples, task {model.task}")
        for k, v in metrics.items():
            print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    return 0
