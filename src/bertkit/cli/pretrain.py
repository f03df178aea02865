"""``bertkit pretrain``: MLM or ELECTRA pretraining from a recipe, alone or under ``torchrun``.

    bertkit pretrain --recipe tiny-cpu --output runs/tiny training.time_budget=20m
    torchrun --nproc-per-node 2 -m bertkit.cli.main pretrain --recipe tiny-cpu --output runs/tiny-ddp

A recipe is a YAML file (or the name of one in recipes/) whose keys are ``PretrainConfig`` fields; each
``key=value`` after the flags overrides one setting (dotted for nested ones: ``training.lr=1e-4``; training
keys may also be written flat, ``lr=1e-4``). Settings, later wins: the defaults < the recipe < ``key=value``
overrides < flags given on the command line (``--lr``, ``--time-budget``, ... one per field; the ``model``
mapping only as ``model.KEY=VALUE``). ``model.family`` picks the architecture of a new model (bert, roberta,
deberta-v2, modernbert, electra, distilbert, mpnet); ``init_from=DIR`` continues a checkpoint of any family:

    bertkit pretrain --recipe tiny-roberta --output runs/r model.num_hidden_layers=6
    bertkit pretrain --recipe tiny-cpu --output runs/cont init_from=models/roberta-base "model={}"
"""

from __future__ import annotations

import argparse
import json

from bertkit.cli.recipe_args import TRAIN_FLAGS, add_recipe_command, config_from_args, settings_or_print
from bertkit.train.pretrain import OBJECTIVES, PretrainConfig, pretrain

KIND = ""
RECIPES = ("tiny-cpu, tiny-roberta, tiny-deberta, tiny-modernbert, tiny-electra, bert-base, mosaicbert-base, "
           "electra-small")


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_recipe_command(sub, "pretrain", "pretrain an encoder (MLM or ELECTRA) from a recipe", __doc__,
                       PretrainConfig, {**TRAIN_FLAGS, "objective": dict(choices=OBJECTIVES)}, KIND, RECIPES, run,
                       required=True, skip=("model",))


def config_from(args: argparse.Namespace) -> PretrainConfig:
    """The run's settings: the recipe < key=value overrides < flags given."""
    return config_from_args(args, PretrainConfig, KIND)


def run(args: argparse.Namespace) -> int:
    cfg = settings_or_print(args, config_from)
    if cfg is None:
        return 0
    result = pretrain(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if result.eval:
        print(json.dumps({"output": str(result.output_dir), "steps": result.state.step,
                          **{k: round(v, 4) for k, v in result.eval.items() if k in
                             ("loss", "mlm_loss", "mlm_accuracy", "disc_accuracy")}}))
    return 0
