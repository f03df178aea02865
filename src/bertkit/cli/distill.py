"""``bertkit distill``: train a smaller task model from one or more fine-tuned teachers.

    bertkit distill --teacher runs/bbc --dataset bbc-news --student-layers 0,2,4 -o runs/bbc-3l
    bertkit distill --teacher runs/a --teacher runs/b --teacher-weights 0.7,0.3 --train t.csv --eval d.csv \\
        --student-config hidden_size=256 num_attention_heads=4 intermediate_size=1024 --alpha-attn 1 -o runs/s

Settings come from ``--config recipe.yaml`` (plain YAML whose keys are ``DistillConfig`` and ``TrainConfig``
fields) and are overridden by flags given on the command line. The output is a task model directory that
``bertkit evaluate`` and ``bertkit predict`` read.
"""

from __future__ import annotations

import argparse
import json

import yaml

from bertkit.cli.finetune import DATA_FLAGS, DEVICE_FLAG, TRAINING_FLAGS, read_recipe
from bertkit.compress.distill import ATTN_LAYERS, DistillConfig, distill
from bertkit.utils.output_paths import check_output_dir


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,2,4; got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.7,0.3; got {text!r}") from None


def _key_value(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, e.g. hidden_size=256; got {text!r}")
    return key, yaml.safe_load(raw)


# flag -> config field (None: the flag's own name with dashes turned into underscores)
_FLAGS: list[tuple[str, dict]] = [
    ("--teacher-weights", dict(type=_floats, help="soft-label weight per teacher, e.g. 0.7,0.3 (normalized)")),
    ("--student-layers", dict(type=_ints, help="keep these teacher layers (0-based), e.g. 0,2,4")),
    ("--student-model", dict(help="start from this encoder (e.g. a general-distillation output)")),
    *DATA_FLAGS,
    ("--temperature", dict(type=float, help="soft-label temperature T (default 2)")),
    ("--alpha-kl", dict(type=float, help="weight of the soft-label KL (default 0.5)")),
    ("--alpha-ce", dict(type=float, help="weight of the hard-label task loss (default 0.5)")),
    ("--alpha-hidden", dict(type=float, help="weight of the hidden-state MSE (default 0)")),
    ("--alpha-attn", dict(type=float, help="weight of the attention KL (default 0)")),
    ("--alpha-value", dict(type=float, help="weight of the value-relation KL (default 0)")),
    ("--layer-map", dict(type=_ints, help="teacher layer (0-based) per student layer (default: the kept layers, "
                                          "or uniform)")),
    ("--attn-layers", dict(choices=ATTN_LAYERS, help="attention/value losses on the last layers or all mapped")),
    ("--relation-heads", dict(type=int, help="heads compared when teacher and student head counts differ")),
    *TRAINING_FLAGS,
    DEVICE_FLAG,
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distill fine-tuned teachers into a smaller task model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", required=True, help="run directory (model, checkpoints, metrics)")
    p.add_argument("--config", help="YAML recipe; flags override it")
    p.add_argument("--teacher", action="append", dest="teachers", default=None,
                   help="a fine-tuned task model directory; repeat for several teachers")
    p.add_argument("--student-config", nargs="+", type=_key_value, metavar="KEY=VALUE", default=None,
                   help="a narrower student: the teacher's config with these changes, e.g. hidden_size=256 "
                        "num_attention_heads=4 intermediate_size=1024")
    for flag, kw in _FLAGS:
        p.add_argument(flag, default=None, **kw)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict:
    settings = read_recipe(args.config) if args.config else {}
    names = [kw.get("dest") or flag[2:].replace("-", "_") for flag, kw in _FLAGS] + ["teachers"]
    for name in names:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.student_config is not None:
        settings["student_config"] = dict(args.student_config)
    if args.no_progress:
        settings["progress"] = False
    return settings


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    cfg = DistillConfig.from_dict(settings_from_args(args))
    result = distill(args.output, cfg, resume=args.resume, overwrite=args.overwrite)
    summary = {"output": str(result.output_dir), "stopped": result.state.stopped, "steps": result.state.step,
               "best_step": result.state.best_step, "dev": result.dev, "test": result.test,
               "teachers_test": result.teachers_test}
    print(json.dumps(summary, indent=2))
    return 0
