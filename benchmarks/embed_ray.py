"""Embedding on Ray Data against the single-process engine (issue 18, item 2): the same texts, the same model and
the same 2 CPUs, tokens/s each, their ratio, and the largest difference between the vectors.

    python benchmarks/embed_ray.py                  # 20k BBC sentences, all-MiniLM-L6-v2, a local 2-CPU Ray
    python benchmarks/embed_ray.py --texts 2000     # a quicker look

Texts: as ``embed_scale.py`` (distinct BBC News sentences cut to 8 words, cycled), in a .txt file. Every
measurement runs in a fresh process:

- ``single``: ``Encoder.embed`` on all the texts at once, 2 torch threads (the in-memory path of ``bertkit embed``),
  run before and after the Ray runs (``single_after``); the ratios use the mean of the two;
- ``ray AxT``: ``bertkit.distributed.embed_to_parquet`` (what ``bertkit embed --ray`` runs: Ray Data's
  ``read_text``, ``embed_dataset`` on A actors of T threads, ``write_parquet``) on ``ray.init(num_cpus=2)``, for
  1x2 and 2x1. Ray's start-up (``ray.init``) is timed apart and left out of tokens/s; the actors' start (a process,
  torch's import, the model's load) is in it, as a user waits for it. ``actor_start_s`` is the same pipeline on
  8 texts, run first (so its Ray workers are warm for the measured one, as on a long-lived cluster), and
  ``tokens_per_s_after_start`` leaves it out.

Goals: Ray >= 0.8x the single process's tokens/s; identical vectors. Results: benchmarks/results/embed_ray.json,
with the CPU and the 1-minute load average around each run (the machine may be shared: on 2 cores a load above 2
means the runs shared them, and the ratio then says little).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from embed_scale import count_tokens, make_texts
from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
CONFIGS = [(1, 2), (2, 1)]  # (actors, threads per actor) on 2 CPUs


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    import numpy as np
    import torch

    if args.worker == "single":
        import bertkit

        torch.set_num_threads(2)
        enc = bertkit.load(args.model)
        texts = Path(args.texts_file).read_text(encoding="utf-8").splitlines()
        t0 = time.perf_counter()
        vectors = enc.embed(texts, progress=False)
        seconds = time.perf_counter() - t0
        np.save(Path(args.output_dir) / "vectors.npy", vectors)
        print(json.dumps({"texts": len(texts), "seconds": round(seconds, 2)}))
        return
    import ray

    from bertkit.distributed import embed_to_parquet, read_ray_output

    actors, threads = map(int, args.worker.split("x"))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    out = Path(args.output_dir)
    tiny = out / "tiny.txt"
    tiny.write_text("\n".join(Path(args.texts_file).read_text(encoding="utf-8").splitlines()[:8]) + "\n")
    options = {"workers": actors, "threads_per_worker": threads}
    t0 = time.perf_counter()
    embed_to_parquet([tiny], out / "tiny", args.model, **options)
    actor_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = embed_to_parquet([args.texts_file], out / "vectors", args.model, **options)
    seconds = time.perf_counter() - t0
    np.save(out / "vectors.npy", read_ray_output(out / "vectors"))
    ray.shutdown()
    print(json.dumps({"texts": manifest["rows"], "seconds": round(seconds, 2), "ray_start_s": round(ray_start, 2),
                      "actor_start_s": round(actor_start, 2), "files": len(manifest["files"])}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--texts", type=int, default=20_000)
    p.add_argument("--output", default=str(HERE / "results" / "embed_ray.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--texts-file", dest="texts_file", help=argparse.SUPPRESS)
    p.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import numpy as np
    import ray

    from bertkit.distributed.ray_data import BATCH_TEXTS

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="embed_ray."))
    try:
        texts = work / "texts.txt"
        make_texts(args.texts, texts)
        tokens = count_tokens(args.model, texts)
        runs, vectors = {}, {}
        # the single process before and after the Ray runs: on a shared machine the load drifts, and the two
        # brackets show by how much
        for key in ["single", *(f"{a}x{t}" for a, t in CONFIGS), "single_after"]:
            name = key.removesuffix("_after")
            out = work / key
            out.mkdir()
            run = spawn(__file__, ["--worker", name, "--texts-file", str(texts), "--output-dir", str(out),
                                   "--model", args.model])
            run["tokens"] = tokens
            run["tokens_per_s"] = round(tokens / run["seconds"], 1)
            if "actor_start_s" in run:
                run["tokens_per_s_after_start"] = round(tokens / max(run["seconds"] - run["actor_start_s"], 1e-9), 1)
            run["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            vectors[key] = np.load(out / "vectors.npy")
            runs[key if name == "single" else f"ray_{key}"] = run
            print(key, run, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    single = (runs["single"]["tokens_per_s"] + runs["single_after"]["tokens_per_s"]) / 2
    ray_runs = {k: r for k, r in runs.items() if k.startswith("ray_")}
    ratios = {k: round(r["tokens_per_s"] / single, 3) for k, r in ray_runs.items()}
    diffs = {k: float(np.abs(v - vectors["single"]).max()) for k, v in vectors.items() if k != "single"}
    diffs = {(k if k == "single_after" else f"ray_{k}"): d for k, d in diffs.items()}
    report = {
        "command": "python benchmarks/embed_ray.py " + " ".join(sys.argv[1:]),
        "model": args.model, "ray": ray.__version__, "cpus": 2, "batch_texts_per_actor_call": BATCH_TEXTS,
        "texts": "BBC News sentences, first 8 words, cycled", "runs": runs,
        "single_tokens_per_s_mean_of_before_and_after": round(single, 1),
        "ray_over_single_tokens_per_s": ratios,
        "ray_over_single_tokens_per_s_after_actor_start": {
            k: round(r["tokens_per_s_after_start"] / single, 3) for k, r in ray_runs.items()},
        "max_abs_diff_vs_single": diffs,
        "goals": {"ray_at_least_0.8x": max(ratios.values()) >= 0.8,
                  "identical": max(d for k, d in diffs.items() if k.startswith("ray_")) == 0.0},
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    write_report(args.output, report)
    print(json.dumps({k: report[k] for k in ("ray_over_single_tokens_per_s", "max_abs_diff_vs_single", "goals")},
                     indent=2))


if __name__ == "__main__":
    main()
