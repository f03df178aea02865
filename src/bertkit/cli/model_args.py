"""The task-model arguments ``predict`` and ``evaluate`` share: one model directory or several (an ensemble that
averages their probabilities), ``--weights`` for the ensemble, and ``--threshold`` for multi-label decisions."""

from __future__ import annotations

import argparse
import logging

from bertkit.cli.engine_args import engine_from_args
from bertkit.ensemble import Ensemble
from bertkit.loader import load_task_model
from bertkit.task_model import TaskModel
from bertkit.thresholds import parse_threshold

log = logging.getLogger("bertkit")


def threshold_arg(text: str) -> float | str:
    try:
        return parse_threshold(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("model_dir", nargs="+", help=f"{help}; several: an ensemble averaging their probabilities "
                                                "(same task and labels)")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="ensemble: one weight per model directory (default: equal)")
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help="multilabel: 'tuned' (per-label thresholds saved with the model, the default when it has "
                        "them), 'fixed' (0.5), or a number for every label")


def model_from_args(args: argparse.Namespace) -> TaskModel | Ensemble:
    """The model the arguments name: a TaskModel, or an Ensemble of several; logs the multi-label thresholds."""
    dirs = args.model_dir
    if args.weights is not None and len(args.weights) != len(dirs):
        raise ValueError(f"--weights: {len(args.weights)} weights for {len(dirs)} model directories")
    engine = engine_from_args(args)
    model = load_task_model(dirs[0], engine=engine) if len(dirs) == 1 else \
        Ensemble.from_pretrained(dirs, weights=args.weights, engine=engine)
    if args.threshold is not None and model.task != "multilabel":
        raise ValueError(f"--threshold is for multilabel models; this one does {model.task}")
    if model.task == "multilabel":
        log.info("multilabel decisions: %s", model.decision_thresholds(args.threshold)[1])
    return model
