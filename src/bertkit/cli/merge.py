"""``bertkit merge BASE MODEL [MODEL ...] -o DIR``: merge models fine-tuned from one base into one encoder.

    bertkit merge all-MiniLM-L6-v2 runs/bbc runs/tweets -o runs/merged                       # the mean of the two
    bertkit merge BASE runs/a runs/b --method dare --drop-rate 0.9 --weights 1,1 --seed 0 -o runs/merged-dare
    bertkit merge BASE --multi-head bbc=runs/bbc tweets=runs/tweets --method dare -o runs/multi

Methods (``bertkit.compress.merge``): ``task_arithmetic`` adds the weighted task vectors (fine-tuned minus base)
back onto the base, ``base + scaling * sum_i w_i * delta_i``; ``dare`` first drops each delta entry with
probability ``--drop-rate`` and rescales the rest by 1/(1 - p) (model i's mask from seed + i). ``--weights``
default to 1/n each (the mean). MODELs are encoders or task models; their task heads are not merged, and the
output is a plain encoder directory (``bertkit embed``, ``finetune --model``) with the base's tokenizer and a
``merge_config.json`` of the settings. ``--multi-head NAME=DIR ...`` (task models, instead of MODELs) keeps each
task's own head on the merged encoder: a ``MultiHeadModel`` directory (``MultiHeadModel.load``). The output is
built beside DIR and moved in when whole; a non-empty DIR needs ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bertkit.compress.merge import (
    HEADS_DIR,
    MANIFEST,
    METHODS,
    check_compatible,
    encoder_of,
    merge,
    merge_task_models,
)
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import BertkitError
from bertkit.model.bert import BertModel
from bertkit.model.directory import inspect_model_dir
from bertkit.model.families import write_config
from bertkit.model.weights import save_weights
from bertkit.task_model import TaskModel
from bertkit.utils.atomic import atomic_dir, atomic_write_text
from bertkit.utils.output_paths import check_output_dir

CONFIG_FILE = "merge_config.json"
# what an earlier multi-head save in DIR leaves: it would still claim the directory for heads the new model lacks
STALE = (MANIFEST, HEADS_DIR)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge models fine-tuned from one base (task arithmetic, DARE, one encoder "
                                     "with several task heads)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="the model they were all fine-tuned from: a built-in name or a directory")
    p.add_argument("models", nargs="*", metavar="MODEL", help="fine-tuned encoders or task models (directories)")
    p.add_argument("--multi-head", nargs="+", metavar="NAME=DIR", default=None,
                   help="task models to merge, each keeping its own head as task NAME (instead of MODELs)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the merged model's directory")
    p.add_argument("--method", type=lambda s: s.replace("-", "_"), choices=METHODS, default="task_arithmetic",
                   help="task_arithmetic (default) or dare")
    p.add_argument("--weights", type=_floats, default=None, metavar="W,W,...",
                   help="one weight per model, e.g. 0.7,0.3 (default 1/n each: the mean)")
    p.add_argument("--scaling", type=float, default=1.0, help="multiplies the summed task vectors (default 1)")
    p.add_argument("--drop-rate", type=float, default=0.9, help="DARE's drop probability p in [0, 1) (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="DARE's masks: model i draws from seed + i (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (the multi-head model's; default: CUDA if present)")
    p.add_argument("--overwrite", action="store_true", help="replace the model in a non-empty --output")
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.5,0.5; got {text!r}") from None


def task_dirs(pairs: list[str]) -> dict[str, str]:
    """``NAME=DIR`` arguments -> {name: dir}, each name once."""
    out: dict[str, str] = {}
    for text in pairs:
        name, sep, d = text.partition("=")
        if not sep or not name or not d:
            raise BertkitError(f"--multi-head: expected NAME=DIR, e.g. bbc=runs/bbc; got {text!r}")
        if name in out:
            raise BertkitError(f"--multi-head: task name {name!r} is given twice")
        out[name] = d
    return out


def check_same_architecture(base: BertModel, base_name: str, models: dict[str, BertModel]) -> None:
    """merge's checks, with the error naming both directories."""
    for name, model in models.items():
        try:
            check_compatible(base, {name: model})
        except ValueError as e:
            raise BertkitError(f"cannot merge {name} onto base {base_name}: they differ in architecture ({e})") \
                from None


def check_same_tokenizer(base_tok: Tokenizer, base_name: str, tokenizers: dict[str, Tokenizer]) -> None:
    for name, tok in tokenizers.items():
        if tok.fingerprint() != base_tok.fingerprint():
            raise BertkitError(f"cannot merge {name} onto base {base_name}: their tokenizers differ (a merged "
                               "encoder reads one vocabulary)")


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(args.output)  # fail before any work, naming the path
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise BertkitError(f"--output {out} exists and is not empty; pass --overwrite to replace the model in it")
    heads = task_dirs(args.multi_head) if args.multi_head else {}
    if heads and args.models:
        raise BertkitError("give the models either as MODEL ... (one merged encoder) or as --multi-head NAME=DIR "
                           "... (the encoder with each task's head), not both")
    named = heads or {d: d for d in args.models}
    if not named:
        raise BertkitError("nothing to merge: give at least one fine-tuned MODEL (or --multi-head NAME=DIR)")
    if args.weights is not None and len(args.weights) != len(named):
        raise BertkitError(f"--weights has {len(args.weights)} values for {len(named)} models")
    if not 0 <= args.drop_rate < 1:
        raise BertkitError(f"--drop-rate must be in [0, 1), got {args.drop_rate}")

    info = inspect_model_dir(args.base)
    base = encoder_of(info.path)
    base_tok = Tokenizer.from_dir(info.weights_dir)
    settings: dict[str, Any] = {"base": args.base, "method": args.method, "weights": args.weights,
                                "scaling": args.scaling, "drop_rate": args.drop_rate if args.method == "dare" else None,
                                "seed": args.seed}
    if heads:
        tasks = {name: TaskModel.from_pretrained(d, device="cpu") for name, d in heads.items()}
        check_same_architecture(base, args.base, {heads[n]: tm.head.encoder for n, tm in tasks.items()})
        check_same_tokenizer(base_tok, args.base, {heads[n]: tm.tokenizer for n, tm in tasks.items()})
        model = merge_task_models(base, tasks, args.weights, args.method, args.drop_rate, args.scaling, args.seed,
                                  device=args.device)
        with atomic_dir(out, stale=STALE) as build:
            atomic_write_text(build / CONFIG_FILE, json.dumps({**settings, "tasks": heads}, indent=2) + "\n")
            model.save(build)  # its manifest last: it marks a complete save
        print(f"merged {len(tasks)} task models ({', '.join(tasks)}) -> {out}")
        return 0
    encoders = {d: encoder_of(inspect_model_dir(d).path) for d in named}
    check_same_architecture(base, args.base, encoders)
    check_same_tokenizer(base_tok, args.base, {d: Tokenizer.from_dir(inspect_model_dir(d).weights_dir)
                                               for d in named})
    merged = merge(base, encoders, args.weights, args.method, args.drop_rate, args.scaling, args.seed)
    with atomic_dir(out, stale=STALE) as build:
        write_config(merged.config, build)
        save_weights(merged, build)
        base_tok.save(build)
        atomic_write_text(build / CONFIG_FILE, json.dumps({**settings, "models": list(named)}, indent=2) + "\n")
    print(f"merged {len(encoders)} models onto {args.base} ({args.method}) -> {Path(out)}")
    return 0
