"""``bertkit predict DIR [DIR ...] --input FILE --output FILE``: labels and probabilities (words and tags for NER);
several directories: their ensemble's averaged probabilities.

Input: .txt (one text per line; for NER one sentence per line, words split on whitespace), .jsonl
(field ``text``, ``text_pair``; NER ``tokens``; question answering ``question``, ``context``), .csv/.tsv, .conll
for NER, SQuAD .json for question answering (``cli/qa.py``). NER with
``--aggregation-strategy none|simple|first|average|max``: raw texts (.txt lines, .jsonl/.csv field ``text``) ->
entities with character offsets, as transformers' token-classification pipeline gives them (with
``--long-inputs chunk``, over the whole text: each token tagged in the window where it is most central).
Output: .jsonl (one JSON object per input, in order) or .csv (sequence tasks), written atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args
from bertkit.cli.long_input_args import add_long_input_args, long_input_kwargs
from bertkit.cli.model_args import add_model_args, model_from_args
from bertkit.data.tasks import read_task_file
from bertkit.data.text_files import read_text_pairs, read_texts
from bertkit.errors import InputFileError
from bertkit.inference.token_aggregation import STRATEGIES
from bertkit.utils.atomic import atomic_path
from bertkit.utils.output_paths import check_output_file

OUTPUT_FORMATS = (".jsonl", ".csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict labels (or NER tags) for a file of texts")
    add_model_args(p, "task model directory")
    p.add_argument("--input", "-i", required=True)
    p.add_argument("--output", "-o", required=True, help=".jsonl or .csv")
    p.add_argument("--text-column", default=None, help="default text (NER .jsonl: tokens)")
    p.add_argument("--text-pair-column", default=None, help="pair models: default text_pair")
    p.add_argument("--aggregation-strategy", choices=STRATEGIES, default=None,
                   help="NER on raw text: entities with character offsets, grouped as transformers' pipeline does "
                        "(default: word-level tags of whitespace-split words)")
    add_engine_args(p)
    add_long_input_args(p)
    p.set_defaults(func=run)


def read_inputs(path: Path, task: str, text_column: str | None, pair_column: str | None
                ) -> tuple[list, list[str] | None]:
    suffix = path.suffix.lower()
    if task == "ner":
        if suffix == ".conll":
            return read_task_file(path, "ner").words or [], None
        if suffix == ".jsonl":
            return _jsonl_words(path, text_column or "tokens"), None
        return [t.split() for t in read_texts(path, text_column)], None
    return read_text_pairs(path, task == "pair-classification", text_column, pair_column)


def _jsonl_words(path: Path, field: str) -> list[list[str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            words = json.loads(line).get(field)
        except (json.JSONDecodeError, AttributeError):
            raise InputFileError(path, "expected a JSON object per line", line=n) from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise InputFileError(path, f"field {field!r} must be a list of strings", line=n)
        out.append(words)
    return out


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.output, OUTPUT_FORMATS)  # fail before any work, naming the path
    model = model_from_args(args)
    if model.task == "qa":
        from bertkit.cli.qa import predict_file

        print(f"{predict_file(model, args.input, out)} predictions -> {out}")
        return 0
    if model.task == "ner" and out.suffix.lower() == ".csv":
        raise ValueError(f"{out}: NER predictions are lists of words and tags; write .jsonl")
    if args.aggregation_strategy is not None:
        if model.task != "ner":
            raise ValueError(f"--aggregation-strategy applies to NER models; {args.model_dir[0]} is {model.task}")
        texts, pairs = read_texts(Path(args.input), args.text_column), None
        preds = model.predict(texts, pairs, aggregation_strategy=args.aggregation_strategy, **long_input_kwargs(args))
    else:
        texts, pairs = read_inputs(Path(args.input), model.task, args.text_column, args.text_pair_column)
        preds = model.predict(texts, pairs, threshold=args.threshold, **long_input_kwargs(args))
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if out.suffix.lower() == ".jsonl":
            for i, p in enumerate(preds):
                row = p if model.task == "ner" else {
                    "text": texts[i], **({"text_pair": pairs[i]} if pairs else {}), **p}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            w = csv.writer(f)
            keys = ["score"] if model.task == "regression" else ["label"] + [f"p_{n}" for n in model.labels]
            w.writerow(["text", *(["text_pair"] if pairs else []), *keys])
            for i, p in enumerate(preds):
                if model.task == "regression":
                    vals = [p["score"]]
                else:
                    label = p["label"] if "label" in p else "|".join(p["labels"])
                    vals = [label, *(p["probabilities"][n] for n in model.labels)]
                w.writerow([texts[i], *([pairs[i]] if pairs else []), *vals])
    print(f"{len(preds)} predictions -> {out}")
    return 0
