"""``bertkit distill``: train a smaller task model from one or more fine-tuned teachers.

    bertkit distill --teacher runs/bbc --dataset bbc-news --student-layers 0,2,4 -o runs/bbc-3l
    bertkit distill --recipe bbc-news-3l -o runs/bbc-3l teachers=[runs/bbc] --epochs 2
    bertkit distill --teacher runs/a --teacher runs/b --teacher-weights 0.7,0.3 --train t.csv --eval d.csv \\
        --alpha-attn 1 -o runs/s --student-config hidden_size=256 num_attention_heads=4 intermediate_size=1024
    torchrun --nproc-per-node 2 -m bertkit.cli.main distill --recipe bbc-news-3l -o runs/bbc-3l-ddp

A recipe is a YAML file, or the name of one in recipes/distill/, whose keys are ``DistillConfig`` fields and
``TrainConfig`` fields (flat, or under ``training:``). Settings, later wins: the defaults < the recipe <
``key=value`` overrides < flags given on the command line. Each field has a flag (``--teacher``, repeated, for
``teachers``; ``--student-config KEY=VALUE ...`` takes every value up to the next flag, so give it last or
write ``student_config.hidden_size=256``). ``--config FILE`` is the deprecated alias of ``--recipe``. The
output is a task model directory that ``bertkit evaluate`` and ``bertkit predict`` read. Under torchrun (DDP)
``--batch-size`` is the global batch, split over the ranks.
"""

from __future__ import annotations

import argparse
import json

from bertkit.cli.finetune import DATA_FLAGS
from bertkit.cli.recipe_args import TRAIN_FLAGS, add_recipe_command, config_from_args, settings_or_print
from bertkit.compress.distill import ATTN_LAYERS, DistillConfig, distill
from bertkit.train.distributed import is_main_process

KIND = "distill"
FLAGS: dict[str, dict] = {
    **DATA_FLAGS, **TRAIN_FLAGS,
    "teachers": dict(aliases=["--teacher"], metavar="DIR",
                     help="a fine-tuned task model directory; repeat for several teachers"),
    "teacher_weights": dict(help="soft-label weight per teacher, e.g. 0.7,0.3 (normalized)"),
    "student_layers": dict(help="keep these teacher layers (0-based), e.g. 0,2,4"),
    "student_config": dict(help="a narrower student: the teacher's config with these changes, e.g. "
                                "hidden_size=256 num_attention_heads=4 intermediate_size=1024"),
    "attn_layers": dict(choices=ATTN_LAYERS),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_recipe_command(sub, "distill", "distill fine-tuned teachers into a smaller task model", __doc__, DistillConfig,
                       FLAGS, KIND, "bbc-news-3l", run, legacy_config=True)


def config_from(args: argparse.Namespace) -> DistillConfig:
    """The run's settings: the recipe < key=value overrides < flags given."""
    return config_from_args(args, DistillConfig, KIND)


def run(args: argparse.Namespace) -> int:
    cfg = settings_or_print(args, config_from)
    if cfg is None:
        return 0
    result = distill(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # under torchrun: one report, rank 0's
        return 0
    summary = {"output": str(result.output_dir), "stopped": result.state.stopped, "steps": result.state.step,
               "best_step": result.state.best_step, "dev": result.dev, "test": result.test,
               "teachers_test": result.teachers_test}
    print(json.dumps(summary, indent=2))
    return 0
