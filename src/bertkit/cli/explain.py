"""``bertkit explain MODEL --input FILE --output out.jsonl [--html out.html]``: token attributions (integrated
gradients, ``bertkit.explain``) of a sequence task model's predictions.

Input as ``bertkit predict`` reads it: .txt (one text per line), .jsonl (fields ``text``, ``text_pair``), .csv/.tsv.
Output: one JSON object per input, in order: ``text`` (``text_pair``), the prediction (``label`` and
``probabilities``; multilabel ``labels``; regression ``score``), ``target``, ``tokens``, ``offsets``, ``scores``,
``words`` (per-word sums), ``logit``, ``baseline_logit``, ``delta``; and optionally an HTML page colouring the
tokens. Both written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bertkit.data.text_files import read_text_pairs
from bertkit.explain import DEFAULT_STEPS, METHODS, explain
from bertkit.explain_html import render
from bertkit.loader import inspect, load_task_model
from bertkit.utils.atomic import atomic_path, atomic_write_text
from bertkit.utils.output_paths import OutputPathError, check_output_file

log = logging.getLogger("bertkit")

GAP_WARNING = 0.05  # |delta| above this fraction of |F(x) - F(x')| is worth a warning


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="token attributions (integrated gradients) of a classifier's predictions")
    p.add_argument("model_dir", help="a sequence task model (classification, pairs, multilabel, regression)")
    p.add_argument("--input", "-i", required=True, help=".txt, .jsonl, .csv or .tsv, as `bertkit predict` reads")
    p.add_argument("--output", "-o", required=True, help=".jsonl: one object per input")
    p.add_argument("--html", default=None, help="also write this HTML page, tokens coloured by their scores")
    p.add_argument("--target", default=None,
                   help="the label (name or id) to explain for every input; default: each input's predicted label "
                        "(regression: the score)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="integration points (default %(default)s)")
    p.add_argument("--method", choices=METHODS, default="gausslegendre",
                   help="quadrature of the path integral (default %(default)s, as Captum)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="interpolation points per forward + backward pass (default: as many as fit in 4096 tokens)")
    p.add_argument("--text-column", default=None, help="default text")
    p.add_argument("--text-pair-column", default=None, help="pair models: default text_pair")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.output, (".jsonl",))  # fail before any work, naming the path
    page = check_output_file(args.html, (".html", ".htm")) if args.html else None
    if page is not None and page.resolve() == out.resolve():
        raise OutputPathError(f"{out}: --output and --html name the same file")
    if not inspect(args.model_dir).is_task_model:
        raise ValueError(f"{args.model_dir} is not a task model (it has no classification head): explain a model "
                         f"fine-tuned with `bertkit finetune`")
    model = load_task_model(args.model_dir)
    texts, pairs = read_text_pairs(Path(args.input), model.task == "pair-classification", args.text_column,
                                   args.text_pair_column)
    explanations = explain(model, texts, pairs, target=args.target, n_steps=args.steps, method=args.method,
                           batch_size=args.batch_size)
    preds = model.predict(texts, pairs)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for e, p in zip(explanations, preds, strict=True):
            row = {"text": e.text, **({"text_pair": e.text_pair} if pairs is not None else {}), **p, **e.to_dict()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if page is not None:
        atomic_write_text(page, render(list(zip(explanations, preds, strict=True)),
                                       title=f"bertkit explain: {Path(args.model_dir).name}"))
    worst = max((abs(e.delta) for e in explanations), default=0.0)
    loose = [i for i, e in enumerate(explanations) if abs(e.delta) > GAP_WARNING * abs(e.logit - e.baseline_logit)
             and abs(e.delta) > 1e-6]
    if loose:
        log.warning("%d of %d explanations (first: input %d) miss completeness by more than %d%% of their logit "
                    "difference (|delta|); more --steps integrate more accurately", len(loose), len(explanations),
                    loose[0], round(GAP_WARNING * 100))
    print(f"{len(explanations)} explanations ({args.steps} {args.method} steps; largest |delta| {worst:.2g}) -> "
          f"{out}" + (f", {page}" if page is not None else ""))
    return 0
