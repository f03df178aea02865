"""``bertkit classify-prompt MODEL --labels A,B,... -i FILE -o FILE``: zero- or few-shot classification through the
masked LM's head (``PromptClassifier``), no classifier trained.

    bertkit classify-prompt runs/mlm --labels sport,business,politics -i texts.txt -o preds.jsonl
    bertkit classify-prompt runs/mlm --labels pos,neg --template "{text} It was [MASK]." \\
        --verbalizer pos=great,good neg=terrible --eval dev.jsonl
    bertkit classify-prompt runs/mlm --labels pos,neg --verbalizer pos=great neg=terrible \\
        --few-shot train.jsonl --shots 8 --epochs 10 -i texts.txt -o preds.csv --eval dev.csv

Each text goes into ``--template`` (``{text}`` once, ``[MASK]`` once) and each label is scored by the mean
log-probability of its verbalizer words at the mask, softmaxed over the labels. A label's words default to the
label itself; ``--verbalizer LABEL=WORD[,WORD...]`` sets them (each word one token of the vocabulary). Few-shot
(``--few-shot FILE``) is PET: the whole masked LM is fine-tuned with that same score on the first ``--shots`` rows
of each label in FILE (all rows without ``--shots``), in memory; nothing is saved. Labelled files (``--few-shot``,
``--eval``) are .jsonl/.csv/.tsv with a ``text`` and a ``label`` field. Output as ``bertkit predict``'s: .jsonl
({"text", "label", "probabilities"}) or .csv (text, label, p_LABEL ...), written atomically; ``--eval`` prints
accuracy and macro-F1 as one JSON line. Needs a checkpoint with a trained MLM head (saved as XxxForMaskedLM).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.cli.predict import OUTPUT_FORMATS
from bertkit.data.text_files import read_lines, read_records, read_texts
from bertkit.errors import BertkitError, InputFileError
from bertkit.fill_mask import FillMask, PromptClassifier
from bertkit.utils.atomic import atomic_path
from bertkit.utils.output_paths import check_output_file

log = logging.getLogger("bertkit")

DEFAULT_TEMPLATE = "{text} This is about [MASK]."
LABELLED_FORMATS = (".jsonl", ".csv", ".tsv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify-prompt", help="zero- or few-shot classification through a masked LM's head "
                                               "(cloze prompts, PET)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="built-in name or directory of a masked LM (XxxForMaskedLM)")
    p.add_argument("--labels", required=True, type=_names, metavar="A,B,...", help="the labels, comma-separated")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help=f"with {{text}} and [MASK] once each (default {DEFAULT_TEMPLATE!r})".replace("%", "%%"))
    p.add_argument("--verbalizer", nargs="+", action="extend", default=[], metavar="LABEL=WORD[,WORD]",
                   help="a label's words (default: the label itself); several per flag or repeat the flag")
    p.add_argument("--input", "-i", help="texts to classify: .txt (one per line), .jsonl, .csv/.tsv")
    p.add_argument("--output", "-o", help=".jsonl or .csv (with --input)")
    p.add_argument("--text-column", default=None, help="field/column of the texts (default text)")
    p.add_argument("--label-column", default="label", help="field/column of the labels in labelled files")
    p.add_argument("--eval", metavar="FILE", help="a labelled file: print accuracy and macro-F1")
    g = p.add_argument_group("few-shot (PET fine-tuning of the masked LM, in memory)")
    g.add_argument("--few-shot", metavar="FILE", help="a labelled file of training examples")
    g.add_argument("--shots", type=int, default=None, help="use the first N rows of each label (default all)")
    g.add_argument("--epochs", type=int, default=10, help="default 10")
    g.add_argument("--lr", type=float, default=2e-5, help="default 2e-5")
    g.add_argument("--train-batch-size", type=int, default=8, help="default 8")
    g.add_argument("--seed", type=int, default=0, help="the order of the examples (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    add_engine_args(p)
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def verbalizers(labels: list[str], specs: list[str]) -> dict[str, list[str]]:
    """{label: words}: ``LABEL=WORD[,WORD]`` specs, each label's own name where none is given."""
    if len(labels) < 2:
        raise BertkitError(f"--labels {'is empty' if not labels else 'names one label'}: name at least two, "
                           "e.g. --labels sport,business")
    if len(set(labels)) != len(labels):
        raise BertkitError(f"--labels names a label twice: {','.join(labels)}")
    words: dict[str, list[str]] = {}
    for spec in specs:
        label, sep, text = spec.partition("=")
        if not sep or not label or not _names(text):
            raise BertkitError(f"--verbalizer: expected LABEL=WORD[,WORD], e.g. sport=football,match; got {spec!r}")
        if label not in labels:
            raise BertkitError(f"--verbalizer {spec!r}: {label!r} is not one of --labels ({', '.join(labels)})")
        words.setdefault(label, []).extend(_names(text))
    return {label: words.get(label, [label]) for label in labels}


def read_labelled(path: str | Path, labels: list[str], text_column: str | None, label_column: str
                  ) -> tuple[list[str], list[str]]:
    """(texts, labels) of a .jsonl/.csv/.tsv file; a label outside ``labels`` is an error naming its line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABELLED_FORMATS:
        raise InputFileError(path, f"unsupported format {suffix or '(no extension)'!r} for labelled examples; "
                                   f"expected {', '.join(LABELLED_FORMATS)} with a text and a label field")
    text_col = text_column or "text"
    texts, gold = [], []
    for where, (text, label) in read_records(path, read_lines(path), suffix, [text_col, label_column],
                                             required=True):
        line = int(where.split()[-1])
        if not isinstance(text, str):
            raise InputFileError(path, f"field {text_col!r} is {type(text).__name__}, expected a string", line=line)
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise InputFileError(path, f"field {label_column!r} is {type(label).__name__}, expected a label",
                                 line=line)
        if str(label) not in labels:
            raise InputFileError(path, f"label {str(label)!r} is not one of --labels ({', '.join(labels)})",
                                 line=line)
        texts.append(text)
        gold.append(str(label))
    if not texts:
        raise InputFileError(path, "no labelled examples")
    return texts, gold


def first_shots(texts: list[str], labels: list[str], shots: int | None) -> tuple[list[str], list[str]]:
    """The first ``shots`` examples of each label, in file order (all when ``shots`` is None)."""
    if shots is None:
        return texts, labels
    taken: dict[str, int] = {}
    keep = []
    for i, label in enumerate(labels):
        if taken.get(label, 0) < shots:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    short = {k: v for k, v in taken.items() if v < shots}
    if short:
        log.warning("--shots %d: only %s example(s) of %s", shots, ", ".join(map(str, short.values())),
                    ", ".join(map(repr, short)))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def run(args: argparse.Namespace) -> int:
    if (args.input is None) != (args.output is None):
        raise BertkitError("give --input and --output together (texts in, predictions out)")
    if args.input is None and args.eval is None:
        raise BertkitError("nothing to do: give --input FILE --output FILE, or --eval FILE, or both")
    if args.shots is not None and (args.shots < 1 or args.few_shot is None):
        raise BertkitError("--shots needs --few-shot FILE and a count >= 1")
    engine = engine_from_args(args)
    if args.few_shot and (engine.int8 or engine.dtype != "fp32" or engine.backend != "torch"):
        raise BertkitError("--few-shot trains the masked LM: it runs in fp32 on the torch backend (drop --int8, "
                           "--dtype, --backend)")
    out = check_output_file(args.output, OUTPUT_FORMATS) if args.output else None  # fail before any work
    words = verbalizers(args.labels, args.verbalizer)
    # every input is read and checked before the model loads or trains
    train = first_shots(*read_labelled(args.few_shot, args.labels, args.text_column, args.label_column),
                        args.shots) if args.few_shot else None
    dev = read_labelled(args.eval, args.labels, args.text_column, args.label_column) if args.eval else None
    texts = read_texts(args.input, args.text_column) if args.input else None

    clf = PromptClassifier(FillMask.from_pretrained(args.model, device=args.device, engine=engine), args.template,
                           words)
    batch_size = args.batch_size or 32
    if train is not None:
        losses = clf.fit(*train, epochs=args.epochs, lr=args.lr, batch_size=args.train_batch_size, seed=args.seed)
        log.info("few-shot: %d examples, %d epochs, training loss %.4f -> %.4f", len(train[0]), args.epochs,
                 losses[0], losses[-1])
    if dev is not None:
        metrics = clf.evaluate(*dev, batch_size=batch_size)
        print(json.dumps({"eval": args.eval, "examples": len(dev[0]), **metrics}))
    if texts is not None and out is not None:
        probs = clf.predict_proba(texts, batch_size=batch_size)
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            if out.suffix.lower() == ".jsonl":
                for text, p in zip(texts, probs, strict=True):
                    row = {"text": text, "label": clf.labels[int(p.argmax())],
                           "probabilities": {n: round(float(v), 6) for n, v in zip(clf.labels, p, strict=True)}}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                w = csv.writer(f)
                w.writerow(["text", "label", *(f"p_{n}" for n in clf.labels)])
                for text, p in zip(texts, probs, strict=True):
                    w.writerow([text, clf.labels[int(p.argmax())], *(round(float(v), 6) for v in p)])
        print(f"{len(texts)} predictions -> {out}")
    return 0
