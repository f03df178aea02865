"""``bertkit finetune``: train a task model from a built-in dataset or local files.

    bertkit finetune --recipe bbc-news -o runs/bbc lr=5e-5 --time-budget 5m
    bertkit finetune --recipe my-recipe.yaml -o runs/mine
    bertkit finetune --task ner --train train.conll --eval dev.conll -o runs/ner --epochs 3
    bertkit finetune --task qa --train train.json --eval dev.json --max-length 384 -o runs/qa
    torchrun --nproc-per-node 2 -m bertkit.cli.main finetune --recipe bbc-news -o runs/bbc-ddp

A recipe is a YAML file, or the name of one in recipes/ (bbc-news, tweet-sentiment, wnut16-ner), whose keys
are ``FinetuneConfig`` fields and ``TrainConfig`` fields (flat, or under ``training:``). Settings, later wins:
the defaults < the recipe < ``key=value`` overrides < flags given on the command line. Each field has a flag
(``--lr``, ``--batch-size``, ``--train-file`` alias ``--train``, ...). ``--config FILE`` is the deprecated
alias of ``--recipe``. Under torchrun (DDP) ``--batch-size`` is the global batch, split over the ranks.
"""

from __future__ import annotations

import argparse
import json

from bertkit.cli.long_input_args import HELP
from bertkit.cli.recipe_args import TRAIN_FLAGS, add_recipe_command, config_from_args, settings_or_print
from bertkit.data.tag_schemes import AUTO, SCHEMES
from bertkit.data.tasks import BUILTIN_DATASETS, TASKS
from bertkit.data.windows import LONG_INPUTS, WINDOW_POOLING
from bertkit.train.distributed import is_main_process
from bertkit.train.finetune import THRESHOLD_MODES, FinetuneConfig, finetune

KIND = ""  # fine-tuning recipes sit in recipes/ itself, next to the pretraining ones
# what DataConfig's annotations cannot say; shared with `bertkit distill`, whose data fields are the same
DATA_FLAGS: dict[str, dict] = {
    "dataset": dict(help=f"built-in dataset: {', '.join(BUILTIN_DATASETS)}"),
    "train_file": dict(aliases=["--train"], help="training file (.csv/.tsv/.jsonl/.parquet; NER also .conll)"),
    "eval_file": dict(aliases=["--eval"], help="dev file; without it the training file is split 80/10/10"),
    "test_file": dict(aliases=["--test"], help="test file (with --eval)"),
    "label_separator": dict(help="multilabel: separator of labels in one CSV cell"),
    "max_length": dict(help="tokens per example"),
}
# ner only (FinetuneConfig's own field, not DataConfig's)
SCHEME_FLAG = {"scheme": dict(choices=(AUTO, *SCHEMES), help="ner tag scheme (default auto: detected on the data "
                                                             "and logged)")}
THRESHOLDS_FLAG = dict(choices=THRESHOLD_MODES, help="multilabel: per-label thresholds tuned on dev (default) or "
                                                     "the fixed 0.5")
# how a text longer than max_length is read (the same words as evaluate/predict/embed/serve/index)
LONG_INPUT_FLAGS: dict[str, dict] = {
    "long_inputs": dict(choices=LONG_INPUTS, help=HELP["long_inputs"]),
    "stride": dict(help=HELP["stride"]),
    "window_pooling": dict(choices=WINDOW_POOLING, help=HELP["window_pooling"]),
    "train_windows": dict(help="chunk: train on at most N windows of each example per epoch, drawn afresh each "
                               "epoch (default: every window)"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_recipe_command(sub, "finetune",
                       "fine-tune a task model (classification, pairs, multilabel, regression, ner, qa)", __doc__,
                       FinetuneConfig,
                       {**DATA_FLAGS, **SCHEME_FLAG, **LONG_INPUT_FLAGS, **TRAIN_FLAGS,
                        "task": dict(choices=(*TASKS, "qa")), "thresholds": THRESHOLDS_FLAG}, KIND,
                       "bbc-news, tweet-sentiment, wnut16-ner", run, legacy_config=True)


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    """The run's settings: the recipe < key=value overrides < flags given."""
    return config_from_args(args, FinetuneConfig, KIND)


def run(args: argparse.Namespace) -> int:
    cfg = settings_or_print(args, config_from)
    if cfg is None:
        return 0
    result = finetune(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # under torchrun: one report, rank 0's
        return 0
    summary = {"output": str(result.output_dir), "stopped": result.state.stopped, "steps": result.state.step,
               "best_step": result.state.best_step, "dev": result.dev, "test": result.test,
               **({"thresholds": result.thresholds} if result.thresholds else {})}
    print(json.dumps(summary, indent=2))
    return 0
