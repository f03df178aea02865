"""``bertkit predict DIR --input FILE --output FILE``: labels and probabilities (words and tags for NER).

Input: .txt (one text per line; for NER one sentence per line, words split on whitespace), .jsonl
(field ``text``, ``text_pair``; NER ``tokens``), .csv/.tsv, or .conll for NER.
Output: .jsonl (one JSON object per input, in order) or .csv (sequence tasks), written atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.cli.long_input_args import add_long_input_args, long_input_kwargs
from bertkit.data.tasks import read_task_file
from bertkit.data.text_files import read_texts
from bertkit.errors import InputFileError
from bertkit.loader import load_task_model
from bertkit.utils.atomic import atomic_path
from bertkit.utils.output_paths import check_output_file

OUTPUT_FORMATS = (".jsonl", ".csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict labels (or NER tags) for a file of texts")
    p.add_argument("model_dir")
    p.add_argument("--input", "-i", required=True)
    p.add_argument("--output", "-o", required=True, help=".jsonl or .csv")
    p.add_argument("--text-column", default=None, help="default text (NER .jsonl: tokens)")
    p.add_argument("--text-pair-column", default=None, help="pair models: default text_pair")
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
    texts = read_texts(path, text_column)
    pairs = None
    if task == "pair-classification":
        if suffix == ".txt":
            raise InputFileError(path, "a pair model needs two texts per row: use .jsonl/.csv/.tsv")
        pairs = read_texts(path, pair_column or "text_pair")
    return texts, pairs


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
    model = load_task_model(args.model_dir, engine=engine_from_args(args))
    if model.task == "ner" and out.suffix.lower() == ".csv":
        raise ValueError(f"{out}: NER predictions are lists of words and tags; write .jsonl")
    texts, pairs = read_inputs(Path(args.input), model.task, args.text_column, args.text_pair_column)
    preds = model.predict(texts, pairs, **long_input_kwargs(args))
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
