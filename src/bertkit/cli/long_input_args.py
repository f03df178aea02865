"""The long-input flags shared by ``finetune``, ``evaluate``, ``predict``, ``embed``, ``serve`` and ``index``:
``--long-inputs truncate|chunk``, ``--stride N`` and (task models) ``--window-pooling mean|max``."""

from __future__ import annotations

import argparse
from typing import Any

from bertkit.data.windows import LONG_INPUTS, WINDOW_POOLING

HELP = {
    "long_inputs": "truncate (read the first max_length tokens), or chunk: cut a longer text into windows "
                   "overlapping by --stride tokens and combine their results",
    "stride": "chunk: tokens shared by consecutive windows (default: a quarter of the window); must be smaller "
              "than the window",
    "window_pooling": "chunk: pool a text's window logits by mean or max",
}


def add_long_input_args(p: argparse.ArgumentParser, *, pooling: bool = True, saved: bool = True) -> None:
    """``saved``: the defaults are what the model was saved with (task models); else truncate."""
    default = " (default: what the model was saved with)" if saved else " (default truncate)"
    g = p.add_argument_group("long inputs")
    g.add_argument("--long-inputs", choices=LONG_INPUTS, default=None, help=HELP["long_inputs"] + default)
    g.add_argument("--stride", type=int, default=None, metavar="N", help=HELP["stride"])
    if pooling:
        g.add_argument("--window-pooling", choices=WINDOW_POOLING, default=None,
                       help=HELP["window_pooling"] + (default if saved else " (default mean)"))


def long_input_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as keyword arguments of ``TaskModel.predict``/``evaluate`` (None: the model's own)."""
    out = {"long_inputs": args.long_inputs, "stride": args.stride}
    if hasattr(args, "window_pooling"):
        out["window_pooling"] = args.window_pooling
    return out


def check_stride_flag(args: argparse.Namespace) -> None:
    """Where truncation is the default (embed, index), ``--stride`` alone would be ignored: say so."""
    if args.stride is not None and args.long_inputs != "chunk":
        raise ValueError("--stride sets the overlap of windows: it applies with --long-inputs chunk")
