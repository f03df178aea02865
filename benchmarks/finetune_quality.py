"""Fine-tuning quality on the built-in datasets, each next to a classical baseline on the same split.

For each recipe in ``recipes/`` (bbc-news, tweet-sentiment, wnut16-ner): fine-tune all-MiniLM-L6-v2
with ``bertkit.train.finetune.finetune`` (best dev checkpoint, seed fixed), then score the held-out
test split; the baseline (``baselines.py``: TF-IDF + logistic regression for text, per-token
logistic regression for NER) trains on the same train split and scores the same test split.

    python benchmarks/finetune_quality.py [--only bbc-news] [--time-budget 10m]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RECIPES = HERE.parent / "recipes"
NAMES = ("bbc-news", "tweet-sentiment", "wnut16-ner")
MAIN = {"bbc-news": "accuracy", "tweet-sentiment": "macro_f1", "wnut16-ner": "f1"}


def run_one(name: str, time_budget: str | None, out_root: Path) -> dict:
    import yaml

    from baselines import tfidf_logreg, token_logreg_ner
    from bertkit.data.tasks import load_builtin
    from bertkit.train.finetune import FinetuneConfig, finetune

    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    if time_budget:
        recipe["time_budget"] = time_budget
    recipe["progress"] = False
    cfg = FinetuneConfig.from_dict(recipe)
    t0 = time.perf_counter()
    result = finetune(out_root / name, cfg, overwrite=True)
    wall = time.perf_counter() - t0
    splits = load_builtin(name, seed=cfg.training.seed)
    t1 = time.perf_counter()
    base = (token_logreg_ner if name == "wnut16-ner" else tfidf_logreg)(splits["train"], splits["test"])
    base_s = time.perf_counter() - t1
    st = result.state
    return {"dataset": name, "recipe": recipe, "metric": MAIN[name],
            "sizes": {k: len(v) for k, v in splits.items()},
            "bertkit": {"test": result.test, "dev": result.dev, "steps": st.step, "best_step": st.best_step,
                        "stopped": st.stopped, "train_seconds": round(st.elapsed, 1), "wall_seconds": round(wall, 1),
                        "train_tokens_per_s": round(st.tokens / max(st.elapsed, 1e-9), 1)},
            "baseline": {"name": "per-token logistic regression" if name == "wnut16-ner"
                         else "TF-IDF + logistic regression", "test": base, "seconds": round(base_s, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=NAMES, action="append")
    ap.add_argument("--time-budget", default=None, help="override every recipe's budget")
    ap.add_argument("--runs", default="runs/bench", help="where the fine-tuned models go")
    ap.add_argument("--out", default=str(HERE / "results" / "finetune_quality.json"))
    args = ap.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.only or NAMES:
        res = run_one(name, args.time_budget, Path(args.runs))
        report[name] = res
        m = res["metric"]
        print(f"{name}: bertkit test {m} {res['bertkit']['test'][m]:.4f} | baseline {res['baseline']['test'][m]:.4f}",
              flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| dataset | test metric | bertkit (MiniLM-L6) | baseline | difference | training time |",
             "|---|---|---|---|---|---|"]
    for name, r in report.items():
        m = r["metric"]
        ours, base = r["bertkit"]["test"][m], r["baseline"]["test"][m]
        lines.append(f"| {name} | {m} | {ours:.4f} | {base:.4f} ({r['baseline']['name']}) | "
                     f"{100 * (ours - base):+.1f} pts | {r['bertkit']['train_seconds']:.0f} s, "
                     f"{r['bertkit']['steps']} steps |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
