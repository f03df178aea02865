"""``bertkit evaluate DIR [DIR ...] (--dataset NAME [--split test] | --data FILE) [--json]``: metrics of a task model
(several directories: of their ensemble), with a per-label table for classification and multi-label."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args
from bertkit.cli.long_input_args import add_long_input_args, long_input_kwargs
from bertkit.cli.model_args import add_model_args, model_from_args
from bertkit.data.tasks import check_labels_among, load_builtin, read_task_file
from bertkit.task_outputs import per_label_table
from bertkit.train.finetune import CONFIG_FILE

log = logging.getLogger("bertkit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a fine-tuned model on a dataset split or a labelled file")
    add_model_args(p, "directory written by `bertkit finetune` (or a transformers XxxFor* model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="built-in dataset name")
    src.add_argument("--data", help="labelled file (.csv/.tsv/.jsonl/.parquet; NER also .conll; QA SQuAD .json/.jsonl)")
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
    model = model_from_args(args)
    if model.task == "qa":
        if not args.data:
            raise ValueError("a question-answering model is evaluated on a SQuAD-style file: --data FILE")
        from bertkit.cli.qa import evaluate_file

        source, metrics = evaluate_file(model, args.data)
    elif args.dataset:
        seeds = sorted({training_seed(Path(d)) for d in args.model_dir})
        if args.seed is None and len(seeds) > 1:
            log.warning("the ensemble's models were trained with the split seeds %s: evaluating on seed %d's split "
                        "(--seed to choose); the others may have trained on some of its examples", seeds, seeds[0])
        seed = args.seed if args.seed is not None else training_seed(Path(args.model_dir[0]))
        data = load_builtin(args.dataset, seed=seed)[args.split]
    else:
        data = read_task_file(args.data, model.task, text_column=args.text_column,
                              text_pair_column=args.text_pair_column, label_column=args.label_column,
                              label_separator=args.label_separator)
    if model.task != "qa":
        check_labels_among(data, model.labels, f"not among the model's labels ({', '.join(model.labels)})",
                           "the model cannot predict them")
        source, metrics = data.source, {"examples": len(data),
                                        **model.evaluate(data, threshold=args.threshold, **long_input_kwargs(args))}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{source}: {metrics['examples']} examples, task {model.task}")
        per_label = metrics.pop("per_label", None)
        for k, v in metrics.items():
            print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
        if per_label:
            print("\n".join("  " + line for line in per_label_table(per_label)))
    return 0
