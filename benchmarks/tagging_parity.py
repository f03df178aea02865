"""Raw-text NER parity: bertkit's aggregated entities against transformers' token-classification pipeline.

Fine-tunes all-MiniLM-L6-v2 on wnut16-ner for a short budget (``bertkit finetune --recipe wnut16-ner
--time-budget ...``), then on the wnut16 test sentences joined into raw text (words separated by one space) runs
``TaskModel.predict(texts, aggregation_strategy=s)`` and ``pipeline("token-classification", model=RUN,
aggregation_strategy=s)`` on the same saved model, for every strategy, and counts the entities that match exactly
(group/entity, start, end, word) and the largest score difference between matched ones.

    python benchmarks/tagging_parity.py --time-budget 5m               # the real run
    python benchmarks/tagging_parity.py --time-budget 60s --limit 200  # a quick one
    python benchmarks/tagging_parity.py --reuse                        # compare again on the model already there
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STRATEGIES = ("none", "simple", "first", "average", "max")


def finetune(run: Path, time_budget: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bertkit.cli.main", "finetune", "--recipe", "wnut16-ner", "-o", str(run),
                    "--time-budget", time_budget, "--overwrite", "--no-progress"], check=True)
    return time.perf_counter() - t0


def key(entity: dict) -> tuple:
    return (entity.get("entity_group", entity.get("entity")), entity["start"], entity["end"], entity["word"],
            entity.get("index"))


def compare(ours: list[list[dict]], ref: list[list[dict]]) -> dict:
    n_ours = n_ref = matched = same_texts = 0
    max_diff = 0.0
    for o, r in zip(ours, ref, strict=True):
        n_ours, n_ref = n_ours + len(o), n_ref + len(r)
        matched += sum((Counter(map(key, o)) & Counter(map(key, r))).values())
        ref_scores = {key(e): float(e["score"]) for e in r}
        for e in o:
            if key(e) in ref_scores:
                max_diff = max(max_diff, abs(e["score"] - ref_scores[key(e)]))
        same_texts += [key(e) for e in o] == [key(e) for e in r]
    return {"entities_bertkit": n_ours, "entities_transformers": n_ref, "exact_matches": matched,
            "texts_identical": same_texts, "texts": len(ref), "max_score_diff": max_diff}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench/wnut16-ner-parity", help="where the fine-tuned model goes")
    ap.add_argument("--time-budget", default="5m")
    ap.add_argument("--reuse", action="store_true", help="skip fine-tuning: compare on the model in --run")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test sentences")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "tagging_parity.json"))
    args = ap.parse_args()

    import torch
    from transformers import pipeline

    from bertkit.data.tasks import load_builtin
    from bertkit.task_model import TaskModel
    from workers import write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    train_s = None if args.reuse else finetune(run, args.time_budget)
    test = load_builtin("wnut16-ner", seed=42)["test"]  # the recipe's seed: the split it held out
    texts = [" ".join(words) for words in (test.words or [])][:args.limit]

    tm = TaskModel.from_pretrained(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline("token-classification", model=str(run), device="cpu")
    results = {}
    for strategy in STRATEGIES:
        t0 = time.perf_counter()
        ours = [p["entities"] for p in tm.predict(texts, aggregation_strategy=strategy)]
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pipe(texts, aggregation_strategy=strategy)
        t2 = time.perf_counter()
        results[strategy] = {**compare(ours, ref), "bertkit_seconds": round(t1 - t0, 2),
                             "transformers_seconds": round(t2 - t1, 2)}
        print(strategy, results[strategy], flush=True)
    report = {"model": str(run), "recipe": "wnut16-ner", "time_budget": None if args.reuse else args.time_budget,
              "finetune_seconds": None if train_s is None else round(train_s, 1), "test_texts": len(texts),
              "limit": args.limit, "labels": tm.labels, "scheme": tm.scheme, "max_length": tm.max_length,
              "torch_threads": torch.get_num_threads(), "strategies": results}
    if (run / "results.json").is_file():  # how well the compared model tags (entity F1 on the test split)
        report["model_test"] = json.loads((run / "results.json").read_text()).get("test")
    write_report(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
