"""bertkit against its CPU peers, end to end, in one run: text in, normalized vectors out.

Workloads (BBC News, ``bertkit.data.corpora.load_bbc_news``; every engine truncates at 256 tokens):
  W1  1,500 short spans: seeded word spans of article bodies, log-normal lengths (median 16 words, 4..96)
  W2  400 article bodies, truncated at 256 tokens

Engines, each in its own fresh process, 2 threads, rounds paired (every engine once per round, the order
rotated from round to round; medians over rounds):
  sentence-transformers     SentenceTransformer.encode(batch_size=32, normalize_embeddings=True)
  transformers-sorted       AutoTokenizer + AutoModel (sdpa), batches of 32 sorted by length, mean pooling
  transformers-unsorted     the same in input order
  onnxruntime-fp32 / -int8  ``bertkit export onnx --int8``'s graphs in a plain session (intra-op threads set),
                            AutoTokenizer, sorted batches of 32; int8 is onnxruntime's quantize_dynamic
  openvino-fp32             OpenVINO on the same model.onnx (INFERENCE_NUM_THREADS, latency hint), same batches
  bertkit-fp32/bf16/int8    bertkit.load(...).embed(texts): its own tokenizer and token-budget batches
  bertkit-onnx/-onnx-int8   the same on backend="onnx" (the export directory)
  bertkit-auto              dtype="auto": the fastest precision within its quality bound on this CPU

Per engine: tokens/s on W1 and W2 (real tokens after truncation, counted once by bertkit's tokenizer, so every
engine is divided by the same number), worst / mean cosine of its vectors against sentence-transformers' (or
the first fp32 engine run), batch-1 latency (200 W1 spans one at a time, text in, vector out; p50 / p90),
peak RSS of its process, the library's import time and its load time (a fresh process each round). The CPU
model, its class (``bertkit.inference.cpu``) and torch's capability go into the result, one JSON per class:
``benchmarks/results/cpu_peers_<class>.json``.

    python benchmarks/cpu_peers.py                 # full run (~30-40 min on 2 cores), writes the JSON
    python benchmarks/cpu_peers.py --quick         # smoke run: 200 spans, 40 bodies, 1 round; writes nothing
    python benchmarks/cpu_peers.py --table         # the docs/benchmarks.md table from every cpu_peers_*.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import cpu_info, spawn, write_report

HERE = Path(__file__).resolve().parent
ONNX_DIR = HERE.parent / "runs" / "bench" / "minilm-onnx"
PEERS = ["sentence-transformers", "transformers-sorted", "transformers-unsorted", "onnxruntime-fp32",
         "onnxruntime-int8", "openvino-fp32"]
BERTKIT = ["bertkit-fp32", "bertkit-bf16", "bertkit-int8", "bertkit-onnx", "bertkit-onnx-int8", "bertkit-auto"]
ENGINES = PEERS + BERTKIT
MAX_LENGTH = 256
BATCH = 32
MIN_COSINE = 0.99  # the quality bar for a fast path
FP32_COSINE = 0.9999  # "fp32 quality"


# ---- workloads (made once by the parent, read by every worker) ----------------------------------------------
def make_workloads(n_spans: int, n_bodies: int, seed: int = 0) -> dict[str, list[str]]:
    from bertkit.data.corpora import load_bbc_news

    bodies = [" ".join(a.body.split()) for a in load_bbc_news()]
    rng = np.random.default_rng(seed)
    words = [b.split() for b in bodies[:400]]
    spans = []
    for n in np.clip(np.round(rng.lognormal(np.log(16), 0.7, n_spans)), 4, 96).astype(int):
        doc = words[int(rng.integers(len(words)))]
        start = int(rng.integers(0, max(len(doc) - n, 1)))
        spans.append(" ".join(doc[start:start + n]))
    return {"W1": spans, "W2": bodies[:n_bodies]}


def count_tokens(texts: list[str]) -> int:
    from bertkit.data.tokenizer import Tokenizer
    from bertkit.hub import resolve_model_dir

    return sum(map(len, Tokenizer.from_dir(resolve_model_dir()).encode(texts, max_length=MAX_LENGTH).ids))


# ---- engines -----------------------------------------------------------------------------------------------
def mean_pool(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(batch, seq, hidden), (batch, seq) -> L2-normalized mean over real tokens (batch, hidden)."""
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def padded_peer(tokenize, run, sort: bool):
    """An embed(texts) for a peer that takes padded numpy batches: tokenize all (AutoTokenizer), batches of 32
    (sorted by length or in input order), run, mean-pool, normalize, back in input order."""
    def embed(texts: list[str]) -> np.ndarray:
        enc = tokenize(texts)
        ids = enc["input_ids"]
        lengths = [len(x) for x in ids]
        order = sorted(range(len(ids)), key=lambda i: -lengths[i]) if sort else list(range(len(ids)))
        out = None
        for s in range(0, len(order), BATCH):
            idx = order[s:s + BATCH]
            width = max(lengths[i] for i in idx)
            grid = np.zeros((len(idx), width), np.int64)
            mask = np.zeros((len(idx), width), np.int64)
            for r, i in enumerate(idx):
                grid[r, :lengths[i]] = ids[i]
                mask[r, :lengths[i]] = 1
            v = mean_pool(run(grid, mask), mask)
            if out is None:
                out = np.zeros((len(ids), v.shape[1]), np.float32)
            out[idx] = v
        return out
    return embed


def build(engine: str, threads: int):
    """(import seconds, load seconds, embed(texts) -> (n, hidden) normalized float32)."""
    t0 = time.perf_counter()
    if engine.startswith("bertkit"):
        import bertkit
        from bertkit.inference.engine import EngineOptions
        t1 = time.perf_counter()
        variant = engine.split("-", 1)[1]
        onnx = variant.startswith("onnx")
        opts = EngineOptions(dtype="auto" if variant == "auto" else "bf16" if variant == "bf16" else "fp32",
                             int8=variant in ("int8", "onnx-int8"), backend="onnx" if onnx else "torch",
                             threads=threads)
        enc = bertkit.load(ONNX_DIR if onnx else None, engine=opts)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, lambda texts: enc.embed(texts, normalize=True, progress=False), {
            "engine_choice": enc.engine.describe()}

    if engine == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        from bertkit.hub import resolve_model_dir
        t1 = time.perf_counter()
        torch.set_num_threads(threads)
        m = SentenceTransformer(str(resolve_model_dir()), device="cpu")
        m.max_seq_length = MAX_LENGTH
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, lambda texts: m.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                                        convert_to_numpy=True, show_progress_bar=False), {}

    from transformers import AutoTokenizer

    from bertkit.hub import resolve_model_dir
    kind, variant = engine.split("-", 1)
    if kind == "transformers":
        import torch
        from transformers import AutoModel
        t1 = time.perf_counter()
        torch.set_num_threads(threads)
        tok = AutoTokenizer.from_pretrained(str(resolve_model_dir()))
        model = AutoModel.from_pretrained(str(resolve_model_dir()), attn_implementation="sdpa").eval()

        def run(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(grid),
                             attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    elif kind == "onnxruntime":
        import onnxruntime as ort
        t1 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(ONNX_DIR))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        path = ONNX_DIR / ("model.int8.onnx" if variant == "int8" else "model.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def run(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return sess.run(["last_hidden_state"], {"input_ids": grid, "attention_mask": mask,
                                                    "token_type_ids": np.zeros_like(grid)})[0]
    elif kind == "openvino":
        import openvino as ov
        t1 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(ONNX_DIR))
        compiled = ov.Core().compile_model(str(ONNX_DIR / "model.onnx"), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out_port = compiled.output("last_hidden_state")

        def run(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return request.infer({"input_ids": grid, "attention_mask": mask,
                                  "token_type_ids": np.zeros_like(grid)})[out_port]
    else:
        raise ValueError(f"unknown engine {engine!r}")
    t2 = time.perf_counter()

    def tokenize(texts: list[str]) -> dict:
        return tok(texts, truncation=True, max_length=MAX_LENGTH)

    return t1 - t0, t2 - t1, padded_peer(tokenize, run, sort=variant != "unsorted"), {}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its peak (VmHWM), MiB. Not getrusage's ru_maxrss: Linux carries
    that over fork and exec, so a worker would report its parent's peak when that is higher."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(engine: str, threads: int, data: Path, out_dir: Path, latency_n: int) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import_s, load_s, embed, extra = build(engine, threads)
    w = json.loads(data.read_text())
    result: dict = {"engine": engine, "import_s": import_s, "load_s": load_s, "rss_after_load_mb": rss_mb(), **extra}
    embed(w["W1"][:64])  # warm-up: first-call allocations and lazy initialisation
    for name in ("W1", "W2"):
        t = time.perf_counter()
        vecs = embed(w[name])
        result[f"{name}_s"] = time.perf_counter() - t
        result[f"{name}_tokens_per_s"] = w["tokens"][name] / result[f"{name}_s"]
        np.save(out_dir / f"{engine}.{name}.npy", np.asarray(vecs, np.float32))
    times = []
    for text in w["W1"][:latency_n]:
        t = time.perf_counter()
        embed([text])
        times.append(time.perf_counter() - t)
    result["batch1_ms_p50"] = statistics.median(times) * 1e3
    result["batch1_ms_p90"] = float(np.percentile(times, 90)) * 1e3
    result["peak_rss_mb"] = rss_mb("VmHWM")
    return result


# ---- the run -------------------------------------------------------------------------------------------------
def ensure_onnx() -> None:
    if (ONNX_DIR / "model.onnx").is_file() and (ONNX_DIR / "model.int8.onnx").is_file():
        return
    from bertkit.inference.onnx import export_onnx

    export_onnx(None, ONNX_DIR, int8=True)


def machine() -> dict:
    """``workers.cpu_info`` (model, class, capability, cores) plus the features and the kernel choice."""
    import torch

    from bertkit.inference.cpu import detect, kernels

    return {**cpu_info(), "cpu_features": sorted(detect().flags), "torch": torch.__version__,
            "kernel_choice": kernels().describe(), "python": platform.python_version()}


def summarize(engines: list[str], runs: dict[str, list[dict]], vec_dir: Path) -> dict:
    ref_engine = next((e for e in ("sentence-transformers", "transformers-sorted", "bertkit-fp32") if e in engines),
                      engines[0])
    summary = {}
    for e in engines:
        keys = [k for k, v in runs[e][0].items() if isinstance(v, float)]
        row = {k: statistics.median(r[k] for r in runs[e]) for k in keys}
        for name in ("W1", "W2"):
            cos = (np.load(vec_dir / f"{e}.{name}.npy") * np.load(vec_dir / f"{ref_engine}.{name}.npy")).sum(1)
            row[f"{name}_cosine_worst"], row[f"{name}_cosine_mean"] = float(cos.min()), float(cos.mean())
        row["cosine_worst"] = min(row["W1_cosine_worst"], row["W2_cosine_worst"])
        if "engine_choice" in runs[e][0]:
            row["engine_choice"] = runs[e][0]["engine_choice"]
        summary[e] = row
    return {"reference": ref_engine, "results": summary, "goals": goals(summary)}


def goals(s: dict) -> dict:
    """The issue's goals, computed from the medians (None where an engine they need did not run)."""
    peers = {e: r for e, r in s.items() if not e.startswith("bertkit")}
    ours = {e: r for e, r in s.items() if e.startswith("bertkit")}
    good = {e: r for e, r in ours.items() if r["cosine_worst"] >= MIN_COSINE}
    out: dict = {}
    for w in ("W1", "W2"):
        key = f"{w}_tokens_per_s"
        if peers and good:
            best_peer = max(peers, key=lambda e: peers[e][key])
            best = max(good, key=lambda e: good[e][key])
            out[f"{w}_best_bertkit_vs_fastest_peer"] = {"bertkit": best, "peer": best_peer,
                                                        "ratio": good[best][key] / peers[best_peer][key],
                                                        "goal": 1.1}
        fp32_peers = {e: r for e, r in peers.items() if r["cosine_worst"] >= FP32_COSINE}
        if fp32_peers and "bertkit-fp32" in s:
            p = max(fp32_peers, key=lambda e: fp32_peers[e][key])
            out[f"{w}_bertkit_fp32_vs_fastest_fp32_peer"] = {"peer": p, "ratio": s["bertkit-fp32"][key] /
                                                             fp32_peers[p][key], "goal": 1.0}
        if "bertkit-int8" in s and "bertkit-fp32" in s:
            out[f"{w}_int8_vs_fp32"] = {"ratio": s["bertkit-int8"][key] / s["bertkit-fp32"][key], "goal": 1.5}
    if good:
        best = max(good, key=lambda e: good[e]["W1_tokens_per_s"] + good[e]["W2_tokens_per_s"])
        row = good[best]
        if "onnxruntime-int8" in s:
            out["batch1_p50_best_vs_onnxruntime_int8_ms"] = [row["batch1_ms_p50"],
                                                             s["onnxruntime-int8"]["batch1_ms_p50"]]
        ort_rss = [r["peak_rss_mb"] for e, r in peers.items() if e.startswith("onnxruntime")]
        if ort_rss:
            out["peak_rss_best_vs_onnxruntime_mb"] = [row["peak_rss_mb"], min(ort_rss)]
        out["best_path"] = best
    if "bertkit-fp32" in s:
        out["bertkit_fp32_load_s"] = {"load_s": s["bertkit-fp32"]["load_s"], "import_s": s["bertkit-fp32"]["import_s"],
                                      "goal_load_s": 1.0}
    return out


def table(results_dir: Path) -> str:
    """Markdown: one row per engine, per CPU class W1 / W2 tokens/s, worst cosine, batch-1 p50, peak RSS."""
    files = sorted(results_dir.glob("cpu_peers_*.json"))
    reports = [json.loads(f.read_text()) for f in files]
    if not reports:
        return "(no cpu_peers_*.json yet)"
    head = "| engine | " + " | ".join(f"{r['machine']['cpu_class']}: W1 tok/s | W2 tok/s | worst cos | b1 p50 ms "
                                       f"| RSS MiB" for r in reports) + " |"
    lines = [" ".join(f"{r['machine']['cpu_class']} = {r['machine']['cpu_model']} "
                      f"(torch {r['machine']['torch_cpu_capability']})." for r in reports), "", head,
             "|---|" + "---:|" * (5 * len(reports))]
    engines = [e for e in ENGINES if any(e in r["results"] for r in reports)]
    for e in engines:
        cells = []
        for r in reports:
            row = r["results"].get(e)
            cells += ([f"{row['W1_tokens_per_s']:,.0f}", f"{row['W2_tokens_per_s']:,.0f}", f"{row['cosine_worst']:.4f}",
                       f"{row['batch1_ms_p50']:.1f}", f"{row['peak_rss_mb']:,.0f}"] if row else ["–"] * 5)
        lines.append(f"| {'**' + e + '**' if e.startswith('bertkit') else e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, default=1500, help="W1 size")
    p.add_argument("--bodies", type=int, default=400, help="W2 size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency", type=int, default=200, help="batch-1 calls per engine")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--quick", action="store_true", help="200 spans, 40 bodies, 1 round, 30 latency calls; "
                                                         "writes nothing")
    p.add_argument("--output", default=None, help="default: results/cpu_peers_<cpu class>.json")
    p.add_argument("--table", action="store_true", help="print the docs/benchmarks.md table of every cpu_peers_*.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(HERE / "results"))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, Path(args.data), Path(args.out_dir), args.latency)))
        return
    if args.quick:
        args.spans, args.bodies, args.rounds, args.latency = 200, 40, 1, 30
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engines {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if any("onnx" in e or "openvino" in e for e in engines):
        ensure_onnx()
    w = make_workloads(args.spans, args.bodies)
    w["tokens"] = {k: count_tokens(v) for k, v in w.items()}
    info = machine()
    print(f"{info['cpu_model']} ({info['cpu_class']}, torch {info['torch_cpu_capability']}); "
          f"W1 {len(w['W1'])} spans / {w['tokens']['W1']} tokens, W2 {len(w['W2'])} bodies / {w['tokens']['W2']} "
          f"tokens", file=sys.stderr)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "workloads.json"
        data.write_text(json.dumps(w))
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]  # rotated: no engine always first
            for e in order:
                res = spawn(__file__, ["--worker", e, "--threads", str(args.threads), "--data", str(data),
                                       "--out-dir", tmp, "--latency", str(args.latency)],
                            TOKENIZERS_PARALLELISM="false")
                runs[e].append(res)
                print(f"round {r + 1}: {e}: W1 {res['W1_tokens_per_s']:,.0f} tok/s, W2 {res['W2_tokens_per_s']:,.0f} "
                      f"tok/s, b1 p50 {res['batch1_ms_p50']:.1f} ms, load {res['load_s']:.2f} s, "
                      f"RSS {res['peak_rss_mb']:,.0f} MiB", file=sys.stderr)
        out = summarize(engines, runs, Path(tmp))
    report = {"benchmark": "cpu_peers", "model": "all-MiniLM-L6-v2", "machine": info, "threads": args.threads,
              "rounds": args.rounds, "max_length": MAX_LENGTH, "workloads": {
                  "W1": {"texts": len(w["W1"]), "tokens": w["tokens"]["W1"], "what": "BBC word spans, median 16"},
                  "W2": {"texts": len(w["W2"]), "tokens": w["tokens"]["W2"], "what": "BBC bodies at 256 tokens"}},
              "latency_texts": args.latency, **out, "raw": runs}
    print(json.dumps({"results": out["results"], "goals": out["goals"]}, indent=2))
    if not args.quick:
        write_report(args.output or HERE / "results" / f"cpu_peers_{info['cpu_class']}.json", report)


if __name__ == "__main__":
    main()
