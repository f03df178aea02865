"""``bertkit pretrain``: MLM or ELECTRA pretraining from a recipe, alone or under ``torchrun``.

    bertkit pretrain --recipe tiny-cpu --output runs/tiny training.time_budget=20m
    torchrun --nproc-per-node 2 -m bertkit.cli.main pretrain --recipe tiny-cpu --output runs/tiny-ddp

A recipe is a YAML file (or the name of one in recipes/) whose keys are ``PretrainConfig`` fields; each
``key=value`` after the flags overrides one setting (dotted for nested ones: ``training.lr=1e-4``).
``model.family`` picks the architecture of a new model (bert, roberta, deberta-v2, modernbert, electra,
distilbert, mpnet); ``init_from=DIR`` continues a checkpoint of any family instead:

    bertkit pretrain --recipe tiny-roberta --output runs/r model.num_hidden_layers=6
    bertkit pretrain --recipe tiny-cpu --output runs/cont init_from=models/roberta-base "model={}"
"""

from __future__ import annotations

import argparse
import json

from bertkit.train.pretrain import PretrainConfig, pretrain
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder (MLM or ELECTRA) from a recipe",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe name (tiny-cpu, tiny-roberta, tiny-deberta, "
                   "tiny-modernbert, tiny-electra, bert-base, mosaicbert-base, electra-small) or a YAML file")
    p.add_argument("--output", required=True, help="run directory: checkpoints, metrics, the final model")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. training.lr=1e-4 max_length=256")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    cfg = PretrainConfig.from_recipe(args.recipe, args.overrides)
    if args.print_config:
        from dataclasses import asdict

        print(json.dumps(asdict(cfg), indent=2))
        return 0
    result = pretrain(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if result.eval:
        print(json.dumps({"output": str(result.output_dir), "steps": result.state.step,
                          **{k: round(v, 4) for k, v in result.eval.items() if k in
                             ("loss", "mlm_loss", "mlm_accuracy", "disc_accuracy")}}))
    return 0
