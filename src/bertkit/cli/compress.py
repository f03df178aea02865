"""``bertkit compress MODEL --recipe NAME|FILE --output DIR``: run a compression recipe, one measured model per step.

    bertkit compress runs/bbc --recipe recipes/compress/distill-int8.yaml --output runs/bbc-distill-int8
    bertkit compress runs/bbc --recipe prune-int4 --output runs/bbc-prune steps.1.sparsity=0.9 throughput_texts=64

A recipe is a YAML file (or the name of one in recipes/compress/) whose keys are ``CompressRecipe`` fields; each
``key=value`` after the flags overrides one setting, ``steps.K.param=value`` a parameter of step K (1-based).
Settings, later wins: the defaults < the recipe < ``key=value`` overrides (there are no per-field flags: a
recipe's settings sit in its steps).
Writes DIR/step_<k>_<kind>/ (step 0: the original), report.json, report.md and pareto.png, and prints the table.
A failed step is recorded in the report; earlier steps stay, and the exit code is 2.
"""

from __future__ import annotations

import argparse

from bertkit.cli.recipe_args import add_recipe_args, print_config, usage
from bertkit.compress.pipeline import CompressionError, format_table, load_recipe, run_pipeline
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a task model by a recipe of steps (distill, prune, quantize, ...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage=usage(recipe_required=True, before="MODEL ", resume=False, fields=False))
    p.add_argument("model", help="a fine-tuned task model directory")
    add_recipe_args(p, "compress", "int8, distill-int8, prune-int4, speed", required=True, resume=False,
                    output="directory for the step models and the report", example="seed=1 steps.2.sparsity=0.9")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    recipe = load_recipe(args.recipe, args.overrides)  # every setting checked before any work
    if args.print_config:
        print_config(recipe)
        return 0
    try:
        report = run_pipeline(args.model, recipe, args.output, overwrite=args.overwrite)
    except CompressionError as e:
        print(format_table(e.report))
        raise
    print(format_table(report))
    return 0
