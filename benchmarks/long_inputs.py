"""Long inputs on BBC News (``--dataset python-docs-sections``: sections of the Python docs): all-MiniLM-L6-v2
fine-tuned reading the first ``max_length`` tokens of each article (``--long-inputs truncate``) against reading
all of it in overlapping windows (``chunk``, window logits pooled), at the same time budget, next to TF-IDF +
linear baselines that read every word.

5-fold stratified cross-validation (seeded) over all 2,127 articles: in each fold the held-out fifth is the test
set, and a stratified tenth of the rest is the dev set that picks the best checkpoint. Reported: test accuracy per
fold, mean and standard deviation over the folds; and, on the first fold's test set, inference speed (tokens/s and
articles/s) of the truncated and the chunked reading with the same model.

    python benchmarks/long_inputs.py                      # 5 folds, 6 minutes of training per model and fold
    python benchmarks/long_inputs.py --time-budget 10m --stride 32
    python benchmarks/long_inputs.py --quick              # 1 fold, 1 minute: proves it runs (not a result)

    python benchmarks/long_inputs.py --dataset python-docs-sections   # 1,634 sections, median ~950 tokens
    python benchmarks/long_inputs.py --dataset python-docs-sections --readers truncate,chunk,chunk-sampled --reuse

Readers (``--readers``, default truncate,chunk): ``truncate`` and ``chunk`` as above; ``chunk-sampled``: chunk,
training on ``--train-windows`` (default 2) windows of each article per epoch, drawn afresh each epoch, so an
epoch costs what two truncated ones do, however long the articles. Whenever ``truncate`` runs, its model is also
scored reading the test articles in windows (``truncate-read-chunk``: trained on the first tokens, read whole at
inference; no extra training).
``--reuse``: a reader whose run directory (under ``--runs``) already holds a finished fine-tuning with the same
settings is read back from its ``results.json`` instead of trained again (the JSON marks it ``reused``).

JSON: benchmarks/results/long_inputs.json, long_inputs_python-docs-sections.json (``--quick``: under runs/bench/).
Macro-F1 is reported beside accuracy (the Python docs' parts are unbalanced: "library" is 54% of the sections).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MODES = ("truncate", "chunk")  # how inference_speed reads the test set
READERS = {  # reader -> fine-tuning settings beside the shared ones
    "truncate": {"long_inputs": "truncate"},
    "chunk": {"long_inputs": "chunk"},
    "chunk-sampled": {"long_inputs": "chunk", "train_windows": None},  # None: --train-windows
}
EXTRA = "truncate-read-chunk"  # the truncate model reading the test set in windows
# settings a reused run must have been trained with (finetune_config.json keys)
REUSE_KEYS = ("model", "max_length", "long_inputs", "stride", "window_pooling", "train_windows")


def all_articles(name: str = "bbc-news"):
    """Every example of a built-in classification dataset once (its splits put back together), as one TaskData."""
    from bertkit.data.tasks import TaskData, load_builtin

    splits = load_builtin(name)
    parts = [splits[k] for k in ("train", "dev", "test")]
    return TaskData("classification", [t for p in parts for t in p.texts], None, [y for p in parts for y in p.labels],
                    None, name)


def write_jsonl(path: Path, data, idx) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in idx:
            f.write(json.dumps({"text": data.texts[i], "label": data.labels[i]}, ensure_ascii=False) + "\n")
    return path


def reader_settings(reader: str, args: argparse.Namespace) -> dict:
    extra = dict(READERS[reader])
    if "train_windows" in extra:
        extra["train_windows"] = args.train_windows
    return {"model": args.model, "max_length": args.max_length, "stride": args.stride,
            "window_pooling": args.window_pooling, "train_windows": None, **extra}


def finished(out: Path, want: dict, args: argparse.Namespace) -> dict | None:
    """A finished run in ``out`` trained with ``want`` and this time budget, as finetune_one reports it; else None."""
    from bertkit.utils.recipes import parse_duration

    if not (out / "results.json").is_file() or not (out / "finetune_config.json").is_file():
        return None
    cfg = json.loads((out / "finetune_config.json").read_text())
    if any(cfg.get(k) != want[k] for k in REUSE_KEYS) or cfg["training"]["seed"] != args.seed or \
            cfg["training"]["time_budget"] != parse_duration(args.time_budget):
        raise SystemExit(f"--reuse: {out} was trained with other settings than {want} (time budget "
                         f"{args.time_budget}, seed {args.seed}); remove it or drop --reuse")
    r = json.loads((out / "results.json").read_text())
    return {**{k: r[k] for k in ("test", "dev", "steps", "best_step", "stopped", "train_seconds",
                                 "train_tokens_per_s")}, "reused": True}


def finetune_one(reader: str, files: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    from bertkit.train.finetune import finetune

    want = reader_settings(reader, args)
    if args.reuse and (done := finished(out, want, args)) is not None:
        return done
    result = finetune(out, task="classification", train_file=str(files["train"]), eval_file=str(files["dev"]),
                      test_file=str(files["test"]), epochs=args.epochs, lr=1e-4, batch_size=16, warmup_ratio=0.1,
                      schedule="linear", weight_decay=0.01, seed=args.seed, time_budget=args.time_budget,
                      progress=False, overwrite=True, **want)
    st = result.state
    return {"test": result.test, "dev": result.dev, "steps": st.step, "best_step": st.best_step,
            "stopped": st.stopped, "train_seconds": round(st.elapsed, 1),
            "train_tokens_per_s": round(st.tokens / max(st.elapsed, 1e-9), 1)}


def read_in_windows(model_dir: Path, test, args: argparse.Namespace) -> dict:
    """The truncate model scored reading every test article in windows (no training of its own)."""
    from bertkit.task_model import TaskModel

    tm = TaskModel.from_pretrained(model_dir)
    return {"test": tm.evaluate(test, long_inputs="chunk", stride=args.stride, window_pooling=args.window_pooling)}


def inference_speed(model_dir: Path, test, args: argparse.Namespace) -> dict:
    """Tokens/s and articles/s of the same model reading the test articles truncated and in windows."""
    from bertkit.task_model import TaskModel

    tm = TaskModel.from_pretrained(model_dir)
    out = {}
    for mode in MODES:
        feats = tm.featurize(test, with_labels=False, long_inputs=mode, stride=args.stride)
        tm.logits(tm.featurize(test.subset(range(8)), False, mode, args.stride))  # warm up
        t0 = time.perf_counter()
        tm.logits(feats)
        dt = time.perf_counter() - t0
        tokens = int(feats.lengths.sum())
        out[mode] = {"sequences": len(feats), "tokens": tokens, "seconds": round(dt, 2),
                     "tokens_per_s": round(tokens / dt, 1), "articles_per_s": round(len(test) / dt, 2)}
    return out


def length_stats(test, args: argparse.Namespace) -> dict:
    from bertkit.data.tokenizer import Tokenizer
    from bertkit.hub import resolve_model_dir

    tok = Tokenizer.from_dir(resolve_model_dir(args.model))
    n = np.array([len(x) + 2 for x in tok.encode_plain(test.texts)])
    return {"median_tokens": int(np.median(n)), "p90_tokens": int(np.percentile(n, 90)),
            "longer_than_max_length": round(float((n > args.max_length).mean()), 4)}


def summarize(folds: list[dict], key: str) -> dict:
    out = {}
    for metric in ("accuracy", "macro_f1"):
        vals = np.array([f[key]["test"][metric] for f in folds if metric in f[key]["test"]])
        if len(vals) == len(folds):
            out[f"{metric}_mean"] = round(float(vals.mean()), 4)
            out[f"{metric}_std"] = round(float(vals.std(ddof=1)), 4) if len(vals) > 1 else None
            out["per_fold" if metric == "accuracy" else "per_fold_macro_f1"] = [round(float(a), 4) for a in vals]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-folds", type=int, default=None, help="run only the first N folds (default: all)")
    ap.add_argument("--time-budget", default="6m", help="training time per model and fold (default 6m)")
    ap.add_argument("--epochs", type=float, default=10, help="an upper bound; the time budget is meant to stop first")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--stride", type=int, default=None, help="chunk: window overlap (default: a quarter)")
    ap.add_argument("--window-pooling", choices=("mean", "max"), default="mean")
    ap.add_argument("--readers", default="truncate,chunk", help=f"comma-separated, of {', '.join(READERS)}")
    ap.add_argument("--train-windows", type=int, default=2, help="chunk-sampled: windows of each article per epoch")
    ap.add_argument("--reuse", action="store_true", help="read back finished runs with the same settings")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--dataset", default="bbc-news", choices=("bbc-news", "python-docs-sections"),
                    help="python-docs-sections: Python docs sections (median ~950 tokens), the long-document task")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="1 fold, 1 minute of training: proves it runs")
    ap.add_argument("--runs", default="runs/bench/long_inputs", help="where the fine-tuned models go")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    if not readers or any(r not in READERS for r in readers):
        ap.error(f"--readers {args.readers!r}: choose from {', '.join(READERS)}")
    if args.quick:
        args.run_folds, args.time_budget = 1, "1m"
    suffix = "" if args.dataset == "bbc-news" else f"_{args.dataset}"
    out = Path(args.out or (f"runs/bench/long_inputs{suffix}_quick.json" if args.quick else
                            HERE / "results" / f"long_inputs{suffix}.json"))

    from sklearn.model_selection import StratifiedKFold, train_test_split

    from baselines import tfidf_logreg, tfidf_svm
    from workers import write_report

    data = all_articles(args.dataset)
    labels = np.array(data.labels)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(np.zeros(len(labels)),
                                                                                          labels))
    results: list[dict] = []
    report: dict = {"benchmark": "long_inputs", "dataset": args.dataset, "articles": len(data),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("runs", "out")}}
    prior = json.loads(out.read_text()) if args.reuse and out.is_file() else {}
    keys = [*readers, *([EXTRA] if "truncate" in readers else []), "tfidf_logreg", "tfidf_svm"]
    for k, (rest, test_idx) in enumerate(folds[:args.run_folds or args.folds]):
        train_idx, dev_idx = train_test_split(rest, test_size=0.1, stratify=labels[rest], random_state=args.seed)
        d = Path(args.runs) / args.dataset / f"fold{k}"
        d.mkdir(parents=True, exist_ok=True)
        files = {name: write_jsonl(d / f"{name}.jsonl", data, idx)
                 for name, idx in (("train", train_idx), ("dev", dev_idx), ("test", test_idx))}
        train, test = data.subset(list(rest)), data.subset(list(test_idx))
        fold: dict = {"fold": k, "sizes": {"train": len(train_idx), "dev": len(dev_idx), "test": len(test_idx)},
                      "test_lengths": length_stats(test, args)}
        for reader in readers:
            fold[reader] = finetune_one(reader, files, d / reader, args)
            print(f"fold {k} {reader}: test accuracy {fold[reader]['test']['accuracy']:.4f} ({fold[reader]['steps']}"
                  f" steps, {fold[reader]['train_seconds']:.0f} s{', reused' if fold[reader].get('reused') else ''})",
                  flush=True)
        if "truncate" in readers:
            fold[EXTRA] = read_in_windows(d / "truncate", test, args)
            print(f"fold {k} {EXTRA}: test accuracy {fold[EXTRA]['test']['accuracy']:.4f}", flush=True)
        for name, fn in (("tfidf_logreg", tfidf_logreg), ("tfidf_svm", tfidf_svm)):
            fold[name] = {"test": fn(train, test, seed=args.seed)}  # train + dev: a baseline needs no dev set
            print(f"fold {k} {name}: test accuracy {fold[name]['test']['accuracy']:.4f}", flush=True)
        if k == 0 and "chunk" in readers:
            if fold["chunk"].get("reused") and "inference" in prior:  # measured with that model when it was trained
                report["inference"] = {**prior["inference"], "reused": True}
            else:
                report["inference"] = inference_speed(d / "chunk", test, args)
        results.append(fold)
        report["folds"] = results
        report["summary"] = {key: summarize(results, key) for key in keys}
        best = max(("tfidf_logreg", "tfidf_svm"), key=lambda b: report["summary"][b]["accuracy_mean"])
        report["strongest_baseline"] = best
        write_report(out, report)  # after every fold: a killed run keeps what it measured
    print(markdown(report))


def markdown(report: dict) -> str:
    s = report["summary"]
    n = len(report["folds"])
    names = {"truncate": f"MiniLM-L6, first {report['settings']['max_length']} tokens (truncate)",
             EXTRA: "MiniLM-L6 trained truncated, read in windows",
             "chunk": "MiniLM-L6, every token in windows (chunk)",
             "chunk-sampled": f"MiniLM-L6, chunk, {report['settings'].get('train_windows', 1)} window(s) of each "
                              "article per epoch",
             "tfidf_logreg": "TF-IDF + logistic regression", "tfidf_svm": "TF-IDF + linear SVM"}
    lines = [f"| reader | accuracy, mean ± std over {n} fold(s) | macro-F1 | per fold (accuracy) |",
             "|---|---|---|---|"]
    for key, name in names.items():
        if key not in s:
            continue
        std = f" ± {s[key]['accuracy_std']:.4f}" if s[key]["accuracy_std"] is not None else ""
        f1 = f"{s[key]['macro_f1_mean']:.4f}" if "macro_f1_mean" in s[key] else "-"
        lines.append(f"| {name} | {s[key]['accuracy_mean']:.4f}{std} | {f1} | "
                     f"{', '.join(f'{a:.4f}' for a in s[key]['per_fold'])} |")
    inf = report.get("inference")
    if inf:
        lines += ["", "| inference (fold 0 test set) | sequences | tokens | tokens/s | articles/s |",
                  "|---|---|---|---|---|"]
        for mode in MODES:
            r = inf[mode]
            lines.append(f"| {mode} | {r['sequences']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
                         f"{r['articles_per_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
