"""Compression of the bbc-news classifier (all-MiniLM-L6-v2 fine-tuned, `runs/bench/bbc-news` from
``benchmarks/finetune_quality.py``): every figure of docs/benchmarks.md's "Compression" section, from this one script.

Parts (``--part``, default all; each part's result is cached in runs/compress/ and reused):

  distill  a 3-layer student (all-MiniLM-L6-v2's layers 0, 2, 4, *not* fine-tuned) trained on bbc-news twice with
           the same budget (3 epochs, lr 1e-4, batch 16, max length 128, seed 42): `bertkit distill` from the
           fine-tuned teacher (soft-label KL at T = 2 + hard labels, 0.5 each) and `bertkit finetune` without one
  pareto   `bertkit compress` recipes (recipes/compress/*.yaml and a few more below) from the teacher; every step
           of every recipe is a point: test accuracy, size on disk, engine throughput (tokens/s, this machine)
  dare     the bbc-news and tweet-sentiment classifiers (both fine-tuned from all-MiniLM-L6-v2) merged into one
           encoder with each task's own head: task arithmetic and DARE at several drop rates; each task's test
           accuracy against its own model's

    python benchmarks/compress_bbc.py [--part distill|pareto|dare|all]
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
RUNS = ROOT / "runs" / "compress"
TEACHER = ROOT / "runs" / "bench" / "bbc-news"
TWEETS = ROOT / "runs" / "bench" / "tweet-sentiment"
OUT = HERE / "results" / "compress_bbc.json"
STUDENT_LAYERS = [0, 2, 4]


def _load_report() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"benchmark": "compress_bbc"}


# ---- distillation vs no teacher ---------------------------------------------------------------------------------
def part_distill() -> dict:
    import bertkit
    from bertkit.compress.distill import student_from_teacher

    student = RUNS / "minilm-3l"
    if not (student / "model.safetensors").is_file():
        enc = bertkit.load()
        enc.model = student_from_teacher(enc.model, STUDENT_LAYERS)
        enc.save_pretrained(student)
    # The same student, data split (seed 42), budget and training engine; the baseline is plain fine-tuning.
    budget = ["--dataset", "bbc-news", "--epochs", "3", "--lr", "1e-4", "--batch-size", "16", "--max-length", "128",
              "--seed", "42", "--no-progress", "--overwrite"]
    runs = {"distilled": ["distill", "--student-model", str(student), "--teacher", str(TEACHER)],
            "no-teacher": ["finetune", "--model", str(student)]}
    out = {}
    for name, cmd in runs.items():
        d = RUNS / f"bbc-3l-{name}"
        if not (d / "results.json").is_file():
            subprocess.run([sys.executable, "-m", "bertkit.cli.main", *cmd, *budget, "-o", str(d)], check=True)
        r = json.loads((d / "results.json").read_text())
        out[name] = {"dev_accuracy": r["dev"]["accuracy"], "test_accuracy": r["test"]["accuracy"],
                     "test_macro_f1": r["test"]["macro_f1"], "steps": r["steps"], "train_seconds": r["train_seconds"],
                     "directory": str(d.relative_to(ROOT))}
        print(f"{name}: dev {out[name]['dev_accuracy']:.4f}, test {out[name]['test_accuracy']:.4f}", file=sys.stderr)
    teacher = json.loads((TEACHER / "results.json").read_text())
    out["teacher"] = {"dev_accuracy": teacher["dev"]["accuracy"], "test_accuracy": teacher["test"]["accuracy"]}
    return out


# ---- the Pareto curve ---------------------------------------------------------------------------------------------
DATA = {"dataset": "bbc-news", "seed": 42, "max_length": 128, "eval_split": "dev", "throughput_texts": 256}
DISTILLED = RUNS / "bbc-3l-distilled"  # from the distill part
PARETO_RUNS = {  # name: (model directory, steps); every step of every run is a point
    "teacher-int8": (TEACHER, [{"quantize": {"mode": "dynamic"}}]),
    "teacher-w8-emb8": (TEACHER, [{"quantize": {"mode": "weight_only", "bits": 8, "embeddings": 8}}]),
    "teacher-w4-emb4": (TEACHER, [{"quantize": {"mode": "weight_only", "bits": 4, "embeddings": 4}}]),
    "3l-int8": (DISTILLED, [{"quantize": {"mode": "dynamic"}}]),
    "3l-w8-emb8": (DISTILLED, [{"quantize": {"mode": "weight_only", "bits": 8, "embeddings": 8}}]),
    "3l-w4-emb4": (DISTILLED, [{"quantize": {"mode": "weight_only", "bits": 4, "embeddings": 4}}]),
    "3l-structured-int8": (DISTILLED, [
        {"structured": {"target_speedup": 1.5, "finetune_steps": 200, "lr": 5e-5, "batch_size": 16}},
        {"quantize": {"mode": "dynamic"}}]),
    "3l-obert80-w4-emb4": (DISTILLED, [
        {"prune": {"method": "obert", "sparsity": 0.8, "block_size": 4, "epochs": 1, "prune_every": 10, "lr": 5e-5,
                   "batch_size": 16}},
        {"quantize": {"mode": "weight_only", "bits": 4, "embeddings": 4, "pooler": True}}]),
    "3l-structured-w4-emb4": (DISTILLED, [
        {"structured": {"target_speedup": 1.5, "finetune_steps": 200, "lr": 5e-5, "batch_size": 16}},
        {"quantize": {"mode": "weight_only", "bits": 4, "embeddings": 4, "pooler": True}}]),
}


def part_pareto(fresh: bool = False) -> dict:
    from bertkit.compress.pipeline import CompressionError, run_pipeline

    runs = {}
    for name, (model, steps) in PARETO_RUNS.items():
        out = RUNS / "pareto" / name
        cached = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
        if cached.get("status") == "ok" and cached.get("recipe", {}).get("steps") == steps and not fresh:
            report = cached  # this exact recipe already ran to the end: its measurements stand
        else:
            try:
                report = run_pipeline(model, {**DATA, "steps": steps}, out, overwrite=True)
            except CompressionError as e:
                report = e.report
        runs[name] = {"model": str(model.relative_to(ROOT)), "steps": steps, "status": report.get("status"),
                      "rows": [{k: v for k, v in r.items() if k not in ("details", "metrics", "size_report")}
                               for r in report["steps"]]}
        print(f"{name}: {report.get('status')}", file=sys.stderr)
    # Every point against the teacher as measured in the first run (step 0 of teacher-int8).
    base = runs["teacher-int8"]["rows"][0]
    points = []
    for name, run in runs.items():
        for r in run["rows"]:
            if r.get("status") != "ok" or (r["step"] == 0 and run["model"] != runs["teacher-int8"]["model"]
                                           and name != "3l-int8"):
                continue  # each model's own step 0 once
            if r["step"] == 0 and name not in ("teacher-int8", "3l-int8"):
                continue
            points.append({"run": name, "step": r["step"], "label": r["label"], "dev": r["eval"], "test": r["test"],
                           "size_mb": r["size_mb"], "tokens_per_s": r["tokens_per_s"],
                           "size_x": round(base["size_mb"] / r["size_mb"], 2),
                           "speed_x": round(r["tokens_per_s"] / base["tokens_per_s"], 2),
                           "test_drop_points": round(100 * (base["test"] - r["test"]), 2),
                           "dev_drop_points": round(100 * (base["eval"] - r["eval"]), 2)})
    plot_pareto(points, HERE / "results" / "compress_bbc_pareto.png")
    return {"runs": runs, "points": points}


def plot_pareto(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "size_mb", "size on disk (MB, log)"), (axes[1], "speed_x", "speedup (x)")):
        for p in points:
            ax.scatter(p[key], 100 * p["test"], color="tab:red" if p["step"] == 0 else "tab:blue")
            ax.annotate(f"{p['run']}:{p['step']}", (p[key], 100 * p["test"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    fig.suptitle("bbc-news classifier (all-MiniLM-L6-v2): every compression point measured")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


# ---- DARE / task-arithmetic merging -----------------------------------------------------------------------------
def part_dare() -> dict:
    import torch

    from bertkit.compress.merge import merge_task_models
    from bertkit.data.tasks import load_builtin
    from bertkit.hub import resolve_model_dir
    from bertkit.model.weights import load_pretrained
    from bertkit.task_model import TaskModel

    torch.set_num_threads(2)
    models = {"bbc-news": TaskModel.from_pretrained(TEACHER), "tweet-sentiment": TaskModel.from_pretrained(TWEETS)}
    splits = {}
    for task, tm in models.items():
        seed = json.loads((tm.directory / "finetune_config.json").read_text())["training"]["seed"]
        splits[task] = load_builtin(task, seed=seed)  # the models' own splits: dev and test unseen in training
    base, _ = load_pretrained(resolve_model_dir())  # the model both were fine-tuned from

    def scores(predictor) -> dict:
        return {f"{task}_{split}": predictor(task).evaluate(splits[task][split])["accuracy"]
                for task in models for split in ("dev", "test")}

    rows = {"own model": scores(lambda task: models[task])}
    print(f"own models: {rows['own model']}", file=sys.stderr)
    configs = {  # weights in task order (bbc-news, tweet-sentiment); none: the mean
        "task arithmetic, mean (w 0.5 each)": dict(method="task_arithmetic"),
        "task arithmetic, sum (w 1 each)": dict(method="task_arithmetic", weights=[1.0, 1.0]),
        "task arithmetic, w 0.5 / 1": dict(method="task_arithmetic", weights=[0.5, 1.0]),
        "DARE p 0.5, sum": dict(method="dare", drop_rate=0.5, weights=[1.0, 1.0]),
        "DARE p 0.9, sum": dict(method="dare", drop_rate=0.9, weights=[1.0, 1.0]),
        "DARE p 0.9, mean": dict(method="dare", drop_rate=0.9),
        "DARE p 0.9, w 0.5 / 1": dict(method="dare", drop_rate=0.9, weights=[0.5, 1.0]),
    }
    own = rows["own model"]
    for name, kw in configs.items():
        t = time.perf_counter()
        merged = merge_task_models(base, models, seed=0, **kw)
        rows[name] = {**scores(lambda task, m=merged: m[task]), "seconds": round(time.perf_counter() - t, 1)}
        print(f"{name}: {rows[name]}", file=sys.stderr)
    keys = [f"{t}_{s}" for t in models for s in ("dev", "test")]
    for row in rows.values():
        row["drop_points"] = {k: round(100 * (own[k] - row[k]), 2) for k in keys}
    # The merge a user would pick without looking at test: the smallest worst-task drop on dev.
    chosen = min(configs, key=lambda n: max(rows[n]["drop_points"][f"{t}_dev"] for t in models))
    return {"sizes": {f"{t}_{s}": len(splits[t][s]) for t in models for s in ("dev", "test")}, "rows": rows,
            "chosen_on_dev": chosen}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("distill", "pareto", "dare", "all"), default="all")
    p.add_argument("--fresh", action="store_true", help="re-run pareto recipes that already ran to the end")
    args = p.parse_args()
    report = _load_report()
    parts = {"distill": part_distill, "pareto": lambda: part_pareto(args.fresh), "dare": part_dare}
    for name, fn in parts.items():
        if args.part in (name, "all"):
            report[name] = fn()
            write_report(OUT, report)
    print(json.dumps({k: v for k, v in report.items() if k != "pareto"}, indent=2))


if __name__ == "__main__":
    main()
