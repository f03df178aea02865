"""Retrieval quality on the BBC title -> body benchmark (test split: 210 titles against all 2,092 bodies).

Each step is a ``bertkit`` command in a subprocess; every number comes from this one script:
1. all-MiniLM-L6-v2 out of the box;
2. fine-tuned as a bi-encoder on the training titles (in-batch negatives);
3. a cross-encoder trained on hard negatives mined by (2), re-ranking (2)'s top 50: by its logit alone, and
   fused with (2)'s cosine (``logit + w * cosine``, w picked on the dev split);
4. (2)'s recipe again with 3 mined hard negatives per query, without and with distillation from (3)
   (distilled sentence embedding), same time budget;
5. Mirror-BERT on raw text (the bodies' sentences, no titles, no labels) for two models with no
   sentence training of their own: the tiny-cpu model pretrained by ``benchmarks/pretrain_quality.py``
   and all-MiniLM-L6-v2 after 5 minutes of continued MLM (its sentence geometry partly unlearned).

    python benchmarks/retrieval_quality.py [--mirror-budget 4m] [--reranker-budget 9m] [--distill-budget 10m] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from workers import write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = ROOT / "runs" / "retrieval_quality"
KEYS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")


def bertkit_json(*args: str) -> dict:
    """Run ``bertkit *args``; the JSON object on its last stdout line, with the wall time."""
    print("$ bertkit " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bertkit.cli.main", "-q", *args], check=False,
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): bertkit {' '.join(args)}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), flush=True)
    return out


def cached(name: str, reuse: bool, *args: str) -> dict:
    """A step's result, read from runs/retrieval_quality/<name>.json when ``reuse`` and it finished before."""
    path = RUNS / f"{name}.json"
    if reuse and path.is_file():
        return json.loads(path.read_text())
    result = bertkit_json(*args)
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result


def evaluate(name: str, model: str | Path, reuse: bool) -> dict:
    return cached(f"eval-{name}", reuse, "evaluate-retrieval", str(model), "--dataset", "bbc-news", "--split", "test",
                  "--json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror-budget", default="4m", help="each Mirror-BERT run's training budget")
    ap.add_argument("--reranker-budget", default="9m")
    ap.add_argument("--distill-budget", default="10m")
    ap.add_argument("--reuse", action="store_true", help="keep steps of runs/retrieval_quality that finished")
    ap.add_argument("--out", default=str(HERE / "results" / "retrieval_quality.json"))
    ap.add_argument("--markdown-only", action="store_true", help="print the tables of --out and exit")
    args = ap.parse_args()
    if args.markdown_only:
        return reprint(args.out)
    common = ["--dataset", "bbc-news", "--no-progress", "--overwrite", "--precision", "bf16"]
    report: dict = {"settings": vars(args) | {"precision": "bf16"}}
    report["minilm"] = evaluate("minilm", "all-MiniLM-L6-v2", args.reuse)

    bi = RUNS / "biencoder"
    report["biencoder"] = cached("biencoder", args.reuse, "train-embeddings", "-o", str(bi), *common)

    rr = RUNS / "reranker"
    report["reranker"] = cached("reranker", args.reuse, "train-reranker", "-o", str(rr), "--retriever", str(bi),
                                "--rerank-top", "50", "--max-length", "128", "--time-budget", args.reranker_budget,
                                *common)

    # the same hard negatives and budget without the teacher: what the distillation itself adds
    report["hard_negatives"] = cached("hard_negatives", args.reuse, "train-embeddings", "-o",
                                      str(RUNS / "hard_negatives"), "--negatives", "3", "--retriever", str(bi),
                                      "--time-budget", args.distill_budget, *common)

    report["distilled"] = cached("distilled", args.reuse, "train-embeddings", "-o", str(RUNS / "distilled"),
                                 "--negatives", "3", "--retriever", str(bi), "--teacher", str(rr),
                                 "--time-budget", args.distill_budget, *common)

    mirror = {}
    tiny, minilm = ROOT / "runs" / "pretrain_quality" / "tiny-cpu", ROOT / "runs" / "pretrain_quality" / "minilm-full"
    # the tiny model was pretrained at lr 1e-3: it gets a run at a higher lr and a harder span as well
    for name, model, extra in (("tiny-cpu", tiny, ["--lr", "5e-5"]),
                               ("tiny-cpu, lr 5e-4, span 5, 2 epochs", tiny,
                                ["--lr", "5e-4", "--span", "5", "--epochs", "2"]),
                               ("minilm-continued-mlm", minilm, ["--lr", "5e-5"])):
        if not (model / "config.json").is_file():
            print(f"skipping Mirror-BERT on {name}: {model} is missing (run benchmarks/pretrain_quality.py)")
            continue
        key = name.split(",")[0] if extra[1] == "5e-5" else "tiny-cpu-lr5e-4-span5"
        before = evaluate(f"{model.name}-before", model, args.reuse)
        run = cached(f"mirror-{key}", args.reuse, "train-embeddings", "--mirror", "--model", str(model), "-o",
                     str(RUNS / f"mirror-{key}"), *extra, "--time-budget", args.mirror_budget, *common)
        mirror[name] = {"before": before, "after": run}
    report["mirror"] = mirror
    write_report(args.out, report)
    print(markdown(report))


def row(name: str, m: dict) -> str:
    return f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |"


def markdown(report: dict) -> str:
    rr = report["reranker"]
    lines = ["| BBC title -> body, test split (210 queries, 2,092 documents) | " + " | ".join(KEYS) + " |",
             "|---|" + "---|" * len(KEYS),
             row("all-MiniLM-L6-v2 out of the box", report["minilm"]),
             row(f"bi-encoder fine-tuned ({report['biencoder']['steps']} steps)", report["biencoder"]["test"]),
             row("  + cross-encoder re-ranking of the top 50 (its logit)", rr["test"]["reranked"]),
             row(f"  + re-ranking by logit + {rr['test']['fused']['weight']:g} x cosine (weight chosen on dev)",
                 rr["test"]["fused"]),
             row(f"bi-encoder + 3 hard negatives per query ({report['hard_negatives']['steps']} steps)",
                 report["hard_negatives"]["test"]),
             row(f"bi-encoder + 3 hard negatives, distilled from the cross-encoder ({report['distilled']['steps']} "
                 "steps)", report["distilled"]["test"])]
    if report["mirror"]:
        lines += ["", "| Mirror-BERT (raw body sentences only) | steps | NDCG@10 before | after | MRR@10 before | "
                      "after |", "|---|---|---|---|---|---|"]
        for name, m in report["mirror"].items():
            b, a = m["before"], m["after"]["test"]
            lines.append(f"| {name} | {m['after']['steps']} | {b['ndcg@10']:.3f} | {a['ndcg@10']:.3f} | "
                         f"{b['mrr@10']:.3f} | {a['mrr@10']:.3f} |")
    return "\n".join(lines)


def reprint(path: str) -> None:
    """The tables of a finished run (``--markdown-only``)."""
    print(markdown(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main()
