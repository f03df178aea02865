"""``bertkit finetune``: train a task model from a built-in dataset or local files.

Settings come from ``--config recipe.yaml`` (plain YAML whose keys are ``FinetuneConfig`` and
``TrainConfig`` fields) and are overridden by flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertkit.data.tasks import TASKS
from bertkit.errors import InputFileError
from bertkit.train.engine import PRECISIONS
from bertkit.train.finetune import FinetuneConfig, finetune
from bertkit.train.optim import SCHEDULES
from bertkit.utils.output_paths import check_output_dir

# flag -> config field (None: the flag's own name with dashes turned into underscores). The data and training
# flags are shared with `bertkit distill`.
DATA_FLAGS: list[tuple[str, dict]] = [
    ("--dataset", dict(help="built-in dataset: bbc-news, tweet-sentiment, wnut16-ner")),
    ("--train", dict(dest="train_file", help="training file (.csv/.tsv/.jsonl/.parquet; NER also .conll)")),
    ("--eval", dict(dest="eval_file", help="dev file; without it the training file is split 80/10/10")),
    ("--test", dict(dest="test_file", help="test file (with --eval)")),
    ("--text-column", dict()), ("--text-pair-column", dict()), ("--label-column", dict()),
    ("--label-separator", dict(help="multilabel: separator of labels in one CSV cell (default |)")),
    ("--max-length", dict(type=int, help="tokens per example (default 128)")),
]
TRAINING_FLAGS: list[tuple[str, dict]] = [
    ("--epochs", dict(type=float)), ("--max-steps", dict(type=int)), ("--lr", dict(type=float)),
    ("--batch-size", dict(type=int)), ("--grad-accum", dict(type=int)), ("--weight-decay", dict(type=float)),
    ("--warmup-ratio", dict(type=float)), ("--schedule", dict(choices=SCHEDULES)),
    ("--max-grad-norm", dict(type=float)), ("--seed", dict(type=int)),
    ("--eval-every", dict(type=int, help="evaluate every N optimizer steps (default: each epoch)")),
    ("--metric", dict(help="eval metric that picks the best checkpoint (default: the task's main metric)")),
    ("--patience", dict(type=int, help="early stopping after N evals without improvement")),
    ("--time-budget", dict(help="stop training after this long, e.g. 90s, 10m, 1h")),
    ("--precision", dict(choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on CPU")),
    ("--checkpoint-every", dict(type=int)), ("--keep-checkpoints", dict(type=int)),
]
DEVICE_FLAG = ("--device", dict(help="cpu, cuda, cuda:1 (default: CUDA when present)"))
_FLAGS: list[tuple[str, dict]] = [
    ("--task", dict(choices=TASKS, help="default: classification")),
    ("--model", dict(help="built-in name or local HF directory (default all-MiniLM-L6-v2)")),
    *DATA_FLAGS, *TRAINING_FLAGS,
    ("--layer-decay", dict(type=float, help="layer-wise LR decay factor, e.g. 0.9 (default off)")),
    ("--reinit-layers", dict(type=int, help="re-initialise the top k layers")),
    ("--freeze-layers", dict(type=int, help="freeze the bottom k layers")),
    DEVICE_FLAG,
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a task model (classification, pairs, multilabel, regression, ner)")
    p.add_argument("--output", "-o", required=True, help="run directory (model, checkpoints, metrics)")
    p.add_argument("--config", help="YAML recipe; flags override it")
    for flag, kw in _FLAGS:
        p.add_argument(flag, default=None, **kw)
    p.add_argument("--freeze-embeddings", action="store_true", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def read_recipe(path: str) -> dict:
    import yaml

    f = Path(path)
    if not f.is_file():
        raise InputFileError(f, "file not found")
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InputFileError(f, f"not valid YAML ({getattr(e, 'problem', e)})",
                             line=None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise InputFileError(f, "a recipe is a mapping of setting: value")
    return data


def settings_from_args(args: argparse.Namespace) -> dict:
    settings = read_recipe(args.config) if args.config else {}
    names = [kw.get("dest") or flag[2:].replace("-", "_") for flag, kw in _FLAGS] + ["freeze_embeddings"]
    for name in names:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.no_progress:
        settings["progress"] = False
    return settings


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    cfg = FinetuneConfig.from_dict(settings_from_args(args))
    result = finetune(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    summary = {"output": str(result.output_dir), "stopped": result.state.stopped, "steps": result.state.step,
               "best_step": result.state.best_step, "dev": result.dev, "test": result.test}
    print(json.dumps(summary, indent=2))
    return 0

