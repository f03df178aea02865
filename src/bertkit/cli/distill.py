"""``bertkit distill``: train a smaller task model from one or more fine-tuned teachers, or (``--general``) a
smaller encoder from an encoder on raw text.

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

General (task-agnostic) distillation, ``--general`` or ``mode: general`` in the recipe (``GeneralDistillConfig``):

    bertkit distill --general --teacher all-MiniLM-L6-v2 --corpus docs/ notes.jsonl --student-layers 1,3,5 \
        -o runs/minilm-3l --max-steps 2000
    bertkit distill --general --teacher runs/enc --corpus bbc-news -o runs/enc-small \
        --student-config hidden_size=256 num_attention_heads=4 intermediate_size=1024

One teacher (an encoder; default all-MiniLM-L6-v2), ``--corpus`` files, folders or built-in corpora read as
pretraining reads them (the same token cache), no labels; losses ``--alpha-attn`` / ``--alpha-value`` (MiniLM,
1 each by default) and ``--alpha-hidden``; its training defaults are 1 epoch, lr 3e-4, warmup 6%. The output is
a plain encoder directory (``bertkit embed``, ``finetune --model``, ``distill --student-model``), with
checkpoints: ``--resume`` continues a killed run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from bertkit.cli.finetune import DATA_FLAGS
from bertkit.cli.recipe_args import TRAIN_FLAGS, add_field_flags, add_recipe_command, print_config, recipe_settings
from bertkit.compress.distill import ATTN_LAYERS, DistillConfig, GeneralDistillConfig, distill, distill_general
from bertkit.errors import ConfigError
from bertkit.train.distributed import is_main_process
from bertkit.train.trainer import TrainConfig
from bertkit.utils.output_paths import check_output_dir

KIND = "distill"
MODES = ("task", "general")
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
# the settings only general distillation has (its teacher is --teacher too: one encoder)
GENERAL_FLAGS: dict[str, dict] = {
    "corpus": dict(nargs="+", action="extend", metavar="SRC",
                   help="--general: corpus files (.txt/.jsonl/...), folders or built-in corpora (default python-docs)"),
    "cache_dir": dict(help="--general: token cache (default: the one pretraining uses for this corpus)"),
    "eval_sequences": dict(help="--general: held-out rows whose loss picks the best student (default 64)"),
}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# the settings of one mode that the other lacks, for an error that says which mode they belong to
TASK_ONLY = _names(DistillConfig) - _names(GeneralDistillConfig) - {"teachers"}
GENERAL_ONLY = _names(GeneralDistillConfig) - _names(DistillConfig) - {"teacher"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_recipe_command(sub, "distill", "distill fine-tuned teachers into a smaller task model, or (--general) an "
                                           "encoder into a smaller encoder on raw text", __doc__, DistillConfig,
                           FLAGS, KIND, "bbc-news-3l", run, legacy_config=True)
    p.add_argument("--general", action="store_true", default=None,
                   help="general distillation on raw text (GeneralDistillConfig); the recipe key mode: general too")
    add_field_flags(p, GeneralDistillConfig, GENERAL_FLAGS,
                    skip=("teacher", *_names(DistillConfig), *_names(TrainConfig)))


def config_from(args: argparse.Namespace) -> DistillConfig | GeneralDistillConfig:
    """The run's settings: the recipe < key=value overrides < flags given; ``--general`` or ``mode: general`` (in
    the recipe or an override) makes them a GeneralDistillConfig."""
    d = recipe_settings(args, DistillConfig, KIND)
    mode = d.pop("mode", "task")
    if mode not in MODES:
        raise ConfigError(f"setting mode is {mode!r}; choose one of {', '.join(MODES)}")
    if getattr(args, "general", None):
        mode = "general"
    wrong = sorted(set(d) & (TASK_ONLY if mode == "general" else GENERAL_ONLY))
    if wrong:
        other = "task" if mode == "general" else "general (--general)"
        raise ConfigError(f"{', '.join(wrong)}: setting(s) of {other} distillation; this run is {mode} distillation")
    if mode == "task":
        return DistillConfig.from_dict(d)
    return GeneralDistillConfig.from_dict(general_settings(d))


def general_settings(d: dict[str, Any]) -> dict[str, Any]:
    """``teachers`` (what ``--teacher`` sets) -> the one ``teacher`` of general distillation."""
    if "teachers" not in d:
        return d
    teachers = d.pop("teachers")
    teachers = [teachers] if isinstance(teachers, str) else list(teachers or [])
    if "teacher" in d:
        raise ConfigError("give the teacher once: as teacher or as --teacher/teachers, not both")
    if len(teachers) != 1:
        raise ConfigError(f"general distillation has one teacher (an encoder), got {len(teachers)}: "
                          f"{', '.join(map(str, teachers))}")
    return {**d, "teacher": teachers[0]}


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    cfg = config_from(args)
    if args.print_config:
        if isinstance(cfg, GeneralDistillConfig):  # a recipe of it needs the mode
            print(json.dumps({"mode": "general", **dataclasses.asdict(cfg)}, indent=2))
        else:
            print_config(cfg)
        return 0
    if isinstance(cfg, GeneralDistillConfig):
        return run_general(args, cfg)
    result = distill(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # under torchrun: one report, rank 0's
        return 0
    summary = {"output": str(result.output_dir), "stopped": result.state.stopped, "steps": result.state.step,
               "best_step": result.state.best_step, "dev": result.dev, "test": result.test,
               "teachers_test": result.teachers_test}
    print(json.dumps(summary, indent=2))
    return 0


def run_general(args: argparse.Namespace, cfg: GeneralDistillConfig) -> int:
    result = distill_general(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        print(json.dumps({"output": str(result.output_dir), "stopped": result.state.stopped,
                          "steps": result.state.step, "best_step": result.state.best_step, "eval": result.eval},
                         indent=2))
    return 0
