"""``bertkit compress MODEL --recipe FILE --output DIR``: run a compression recipe, one measured model per step.

    bertkit compress runs/bbc --recipe recipes/compress/distill-int8.yaml --output runs/bbc-distill-int8
    bertkit compress runs/bbc --recipe prune-int4 --output runs/bbc-prune steps.1.sparsity=0.9 throughput_texts=64

A recipe is a YAML file (or the name of one in recipes/compress/) whose keys are ``CompressRecipe`` fields; each
``key=value`` after the flags overrides one setting, ``steps.K.param=value`` a parameter of step K (1-based).
Writes DIR/step_<k>_<kind>/ (step 0: the original), report.json, report.md and pareto.png, and prints the table.
A failed step is recorded in the report; earlier steps stay, and the exit code is 2.
"""

from __future__ import annotations

import argparse

from bertkit.compress.pipeline import CompressionError, format_table, load_recipe, run_pipeline
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a task model by a recipe of steps (distill, prune, quantize, ...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="bertkit compress MODEL --recipe FILE --output DIR [--overwrite] [key=value ...]")
    p.add_argument("model", help="a fine-tuned task model directory")
    p.add_argument("--recipe", required=True, help="YAML file, or a recipe name in recipes/compress/ (int8, "
                   "distill-int8, prune-int4, speed)")
    p.add_argument("--output", "-o", required=True, help="directory for the step models and the report")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --output")
    # "+" made optional rather than "*": a "*" positional is consumed, empty, together with MODEL, and overrides
    # after the flags (MODEL --recipe F --output D key=value) would then be rejected as unrecognized.
    overrides = p.add_argument("overrides", nargs="+", default=[], metavar="key=value",
                               help="e.g. seed=1 steps.2.sparsity=0.9")
    overrides.required = False
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    recipe = load_recipe(args.recipe, args.overrides)  # every setting checked before any work
    try:
        report = run_pipeline(args.model, recipe, args.output, overwrite=args.overwrite)
    except CompressionError as e:
        print(format_table(e.report))
        raise
    print(format_table(report))
    return 0
