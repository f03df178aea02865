"""What ``bertkit predict`` and ``bertkit evaluate`` do for a question-answering model.

    bertkit predict runs/qa -i questions.jsonl -o answers.jsonl     # fields question, context (id optional)
    bertkit evaluate runs/qa --data dev.json                         # SQuAD v1/v2 .json or .jsonl: EM / F1

Predictions: one row per question, in input order: ``id``, ``question``, ``answer``, ``score``, ``start``, ``end``
(characters of the context, end exclusive); .jsonl or .csv, written atomically.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bertkit.data.squad import read_squad
from bertkit.qa_model import QAModel
from bertkit.utils.atomic import atomic_path

COLUMNS = ("id", "question", "answer", "score", "start", "end")


def predict_file(model: QAModel, input_path: str | Path, out: Path) -> int:
    """Answer every question of a .jsonl / SQuAD .json file into ``out``; returns the number of rows."""
    data = read_squad(input_path)
    preds = model.predict([e.question for e in data.examples], [e.context for e in data.examples])
    rows = [{"id": e.id, "question": e.question, **p} for e, p in zip(data.examples, preds, strict=True)]
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if out.suffix.lower() == ".jsonl":
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in rows:
                w.writerow([row[k] for k in COLUMNS])
    return len(rows)


def evaluate_file(model: QAModel, data_path: str | Path) -> tuple[str, dict[str, float]]:
    """(source, metrics) of the model on a labelled SQuAD-style file."""
    data = read_squad(data_path)
    metrics = model.evaluate(data)
    return data.source, {"examples": len(data), "skipped": data.n_skipped, **metrics}
