"""Fine-tuning under torchrun on one CPU machine: 2 ranks (gloo, 1 thread each) against 1 process (2 threads).

``bertkit finetune`` of all-MiniLM-L6-v2 (fp32, sequence classification) on tweet-sentiment training examples at
their natural lengths, global batch 32, the same steps both ways. Throughput is the engine's own tokens/s (real
tokens of every rank, training time only: no eval, no checkpoint), per log window of 5 steps; the first window is
warm-up and left out, the rest's median is reported. Runs alternate round by round. One process is measured with 2
threads (how it runs alone) and with 1 (on a busy machine a 2-thread process waits at every parallel region for a
thread the scheduler parked, which can cost it several times its speed). Two ranks on two cores cannot
be faster than one process using both cores for its matmuls: DDP adds an all-reduce of every gradient per step and
each rank runs its matmuls on one thread. This measures what that costs; the point of torchrun is more machines or
GPUs, where the same code scales.

    python benchmarks/ddp_trainers.py [--rounds 2] [--steps 20]

Results: benchmarks/results/ddp_trainers.json, with the CPU model and torch's CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from workers import write_report

HERE = Path(__file__).resolve().parent
BATCH = 32
LOG_EVERY = 5
# mode -> (processes, threads each)
MODES = {"1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1), "torchrun 2 ranks x 1 thread": (2, 1)}


def write_data(directory: Path, steps: int) -> tuple[Path, Path]:
    """The first steps x BATCH shuffled tweet-sentiment training examples, and 32 more as a (small) dev set."""
    import numpy as np

    from bertkit.data.tasks import load_builtin

    train = load_builtin("tweet-sentiment")["train"]
    order = np.random.default_rng(0).permutation(len(train))
    rows = [json.dumps({"text": train.texts[i], "label": train.labels[i]}) for i in order[:(steps + 1) * BATCH]]
    (directory / "train.jsonl").write_text("\n".join(rows[BATCH:]) + "\n")
    (directory / "dev.jsonl").write_text("\n".join(rows[:BATCH]) + "\n")
    return directory / "train.jsonl", directory / "dev.jsonl"


def worker(out: str, train: str, dev: str, steps: int) -> None:
    from bertkit.train.finetune import finetune

    finetune(out, task="classification", model="all-MiniLM-L6-v2", train_file=train, eval_file=dev,
             batch_size=BATCH, max_steps=steps, lr=5e-5, warmup_ratio=0.0, log_every=LOG_EVERY, progress=False,
             seed=0, max_length=128)


def run(mode: str, directory: Path, train: Path, dev: Path, steps: int, i: int) -> dict:
    out = directory / f"run{i}"
    args = [__file__, "--worker", str(out), str(train), str(dev), "--steps", str(steps)]
    nproc, threads = MODES[mode]
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_s"] for r in records if r["kind"] == "train" and r["tokens_per_s"] > 0]
    results = json.loads((out / "results.json").read_text())
    return {"mode": mode, "tokens_per_s": statistics.median(windows[1:]), "windows_tokens_per_s": windows,
            "train_tokens": results["train_tokens"], "train_seconds": results["train_seconds"],
            "world_size": results["world_size"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker", nargs=3, metavar=("OUT", "TRAIN", "DEV"))
    ap.add_argument("--output", default=str(HERE / "results" / "ddp_trainers.json"))
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker, args.steps)
        return
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        train, dev = write_data(Path(tmp), args.steps)
        for r in range(args.rounds):
            for mode in list(MODES) if r % 2 == 0 else list(MODES)[::-1]:
                res = run(mode, Path(tmp), train, dev, args.steps, len(runs[mode]) + 10 * list(MODES).index(mode))
                runs[mode].append(res)
                print(f"round {r + 1} {mode:<28} {res['tokens_per_s']:8.0f} tokens/s", flush=True)
    med = {m: statistics.median(x["tokens_per_s"] for x in runs[m]) for m in MODES}
    one, two = max(med["1 process x 2 threads"], med["1 process x 1 thread"]), med["torchrun 2 ranks x 1 thread"]
    report = {"workload": {"model": "all-MiniLM-L6-v2", "task": "classification", "dataset": "tweet-sentiment",
                           "global_batch": BATCH, "steps": args.steps, "precision": "fp32",
                           "timed": f"median tokens/s of the log windows of {LOG_EVERY} steps after the first"},
              "measured_under_load": "the 2-core machine was shared with other jobs while this ran",
              "tokens_per_s": med, "two_ranks_over_best_one_process": two / one, "runs": runs}
    write_report(args.output, report)
    print("| mode | tokens/s |\n|---|---|\n" + "\n".join(f"| {m} | {v:,.0f} |" for m, v in med.items())
          + f"\n\n2 ranks / the faster 1-process mode: {two / one:.2f}x")


if __name__ == "__main__":
    main()
