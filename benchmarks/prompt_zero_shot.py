"""Zero- and few-shot topic classification on bbc-news through the MLM head (PET-style cloze prompts).

Labels: business, entertainment, politics, sports, tech (213 test articles with the default split seed).

Zero-shot: ``PromptClassifier`` with the template and verbalizers below scores the test split, no
training. Few-shot: ``--shots`` examples per label from the train split (seeded draw), ``fit`` (a short
PET fine-tune of the masked LM), then the same test split.

Only meaningful for a model with a *trained* MLM head (saved as BertForMaskedLM, e.g. bert-base-uncased):
the built-in all-MiniLM-L6-v2 is a sentence model without one, so its head is random and its zero-shot
score is chance; the JSON records ``head_trained`` so such a result cannot be mistaken for a real one.

    python benchmarks/prompt_zero_shot.py [--model DIR] [--shots 8] [--max-length 256]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TEMPLATE = "{text} This article is about [MASK]."
VERBALIZERS = {
    "business": ["business", "economy", "finance"],
    "entertainment": ["entertainment", "film", "music"],
    "politics": ["politics", "government", "election"],
    "sports": ["sport", "sports", "football"],
    "tech": ["technology", "computers", "internet"],
}


def few_shot_sample(texts: list[str], labels: list[str], shots: int, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    taken: Counter[str] = Counter()
    picked = []
    for i in order:
        if taken[labels[i]] < shots:
            taken[labels[i]] += 1
            picked.append(i)
    return [texts[i] for i in picked], [labels[i] for i in picked]


def main() -> None:
    from bertkit.data.tasks import load_builtin
    from bertkit.fill_mask import FillMask, PromptClassifier

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="built-in name or BertForMaskedLM directory")
    ap.add_argument("--shots", type=int, default=8, help="few-shot examples per label (0: zero-shot only)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per templated text (the text is cut)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "prompt_zero_shot.json"))
    args = ap.parse_args()

    torch.manual_seed(args.seed)  # a model without an MLM head gets a random one: make it reproducible
    splits = load_builtin("bbc-news")
    train, test = splits["train"], splits["test"]
    fm = FillMask.from_pretrained(args.model)
    fm.max_length = min(args.max_length, fm.model.config.max_position_embeddings)
    clf = PromptClassifier(fm, TEMPLATE, VERBALIZERS)
    majority = Counter(test.labels).most_common(1)[0][1] / len(test)

    t0 = time.perf_counter()
    zero = clf.evaluate(test.texts, test.labels)
    report: dict = {
        "model": args.model, "head_trained": fm.head_trained, "dataset": "bbc-news", "test_examples": len(test),
        "template": TEMPLATE, "verbalizers": VERBALIZERS, "label_score": "mean verbalizer log-prob, softmax",
        "max_length": fm.max_length, "threads": torch.get_num_threads(),
        "chance_accuracy": 1 / len(VERBALIZERS), "majority_accuracy": majority,
        "zero_shot": {**zero, "seconds": round(time.perf_counter() - t0, 1)},
    }
    print(f"zero-shot ({args.model}, head trained: {fm.head_trained}): accuracy {zero['accuracy']:.4f}, "
          f"macro F1 {zero['macro_f1']:.4f}", flush=True)
    if args.shots:
        texts, labels = few_shot_sample(train.texts, train.labels, args.shots, args.seed)
        t1 = time.perf_counter()
        losses = clf.fit(texts, labels, epochs=args.epochs, lr=args.lr, seed=args.seed)
        fit_s = time.perf_counter() - t1
        few = clf.evaluate(test.texts, test.labels)
        report["few_shot"] = {**few, "shots_per_label": args.shots, "train_examples": len(texts),
                              "epochs": args.epochs, "lr": args.lr, "batch_size": 8,
                              "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
                              "train_seconds": round(fit_s, 1)}
        print(f"few-shot ({len(texts)} examples, {args.epochs} epochs): accuracy {few['accuracy']:.4f}, "
              f"macro F1 {few['macro_f1']:.4f}", flush=True)
    if not fm.head_trained:
        report["note"] = ("this model has no trained MLM head (a random one was created), so the zero-shot score "
                          "is chance level by construction; rerun with --model pointing at a BertForMaskedLM "
                          "checkpoint for a meaningful number")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
