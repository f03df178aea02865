"""The inference engine against its peers, in one run: throughput, quality of the fast paths, batch-1 latency.

Workload: ``embed_throughput.make_workload`` (2,000 sequences of real BBC token ids, log-normal lengths
8..128, median 24), tokenization excluded for every engine, 2 threads, each engine in its own process,
engines interleaved round by round (median over rounds).

Engines
  transformers-fp32      HF transformers BertModel, sdpa; batches of 32, sorted by length and in input order
  onnxruntime-fp32       ``bertkit export onnx`` graph in onnxruntime (graph optimizations on); same batches
  onnxruntime-int8       the same graph through onnxruntime's ``quantize_dynamic`` (per-channel int8 weights)
  bertkit-fp32/bf16/int8 ``Encoder`` engine: token-budget batches it plans itself from the input order

Quality: every engine's mean-pooled, L2-normalized embeddings against transformers-fp32's; worst and mean
cosine over the 2,000 sequences. Latency: 200 sequences of the workload one at a time, median ms per call.

    python benchmarks/inference_engine.py [--rounds 2] [--texts 2000] [--quick]
    python benchmarks/inference_engine.py --int8-ablation      # which int8 recipe (docs/benchmarks.md, "int8 variants")
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embed_throughput import make_workload, padded
from workers import spawn, write_report

HERE = Path(__file__).resolve().parent
ONNX_DIR = HERE.parent / "runs" / "bench" / "minilm-onnx"
ENGINES = ["transformers-fp32", "onnxruntime-fp32", "onnxruntime-int8", "bertkit-fp32", "bertkit-bf16",
           "bertkit-int8"]
LATENCY_TEXTS = 200


def mean_pool(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(batch, seq, hidden), (batch, seq) -> L2-normalized (batch, hidden)."""
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def worker(engine: str, n_texts: int, threads: int, out_dir: Path) -> dict:
    import torch

    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()  # every engine, the peers too, under the same allocator setting
    seqs = make_workload(n_texts)
    tokens = sum(map(len, seqs))
    emb = np.zeros((n_texts, 384), np.float32)
    result: dict = {"engine": engine, "tokens": tokens}
    kind, variant = engine.split("-", 1)

    if kind == "bertkit":
        import bertkit

        enc = bertkit.load(dtype="bf16" if variant == "bf16" else "fp32", int8=variant == "int8")
        from bertkit.encoder import pool

        def embed_all() -> None:
            with enc.engine.running(enc.device):
                for idx, ids, types, packing in enc.engine.batches(seqs, None, enc.device):
                    h = enc._hidden(ids, types, packing).float()
                    v = torch.nn.functional.normalize(pool(h, packing, "mean"), dim=1)
                    emb[idx] = v.numpy()

        def one(seq: list[int]) -> None:
            from bertkit.model.attention import Packing

            with enc.engine.running(enc.device):
                enc.model.forward_packed(torch.tensor(seq), Packing.from_lengths([len(seq)]))

        embed_all()  # warm-up
        t = time.perf_counter()
        embed_all()
        result["tokens_per_s"] = tokens / (time.perf_counter() - t)
    else:
        if kind == "transformers":
            from transformers import BertModel

            from bertkit.hub import resolve_model_dir

            model = BertModel.from_pretrained(resolve_model_dir(), attn_implementation="sdpa").eval()

            def hidden(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
                return out.last_hidden_state.numpy()
        else:
            from bertkit.inference.onnx import OnnxModel

            sess = OnnxModel(ONNX_DIR, int8=variant == "int8", threads=threads)

            def hidden(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                return sess.run(ids, mask, np.zeros_like(ids))["last_hidden_state"]

        def run_batches(order: list[int], keep: bool) -> None:
            for s in range(0, len(order), 32):
                idx = order[s:s + 32]
                ids, mask = (x.numpy() for x in padded([seqs[i] for i in idx]))
                h = hidden(ids, mask)
                if keep:
                    emb[idx] = mean_pool(h, mask)

        def one(seq: list[int]) -> None:
            hidden(np.array([seq], dtype=np.int64), np.ones((1, len(seq)), dtype=np.int64))

        lengths = [len(s) for s in seqs]
        orders = {"unsorted": list(range(n_texts)), "sorted": sorted(range(n_texts), key=lambda i: -lengths[i])}
        for mode, order in orders.items():
            run_batches(order[:96], keep=False)  # warm-up
            t = time.perf_counter()
            run_batches(order, keep=mode == "sorted")
            result[f"{mode}_tokens_per_s"] = tokens / (time.perf_counter() - t)
        result["tokens_per_s"] = result["sorted_tokens_per_s"]

    sample = seqs[:LATENCY_TEXTS]
    for seq in sample[:20]:
        one(seq)
    times = []
    for seq in sample:
        t = time.perf_counter()
        one(seq)
        times.append(time.perf_counter() - t)
    result["latency_ms_p50"] = statistics.median(times) * 1e3
    result["latency_ms_p90"] = float(np.percentile(times, 90)) * 1e3
    np.save(out_dir / f"{engine}.npy", emb)
    return result


def int8_ablation(n_texts: int, threads: int) -> dict:
    """Which int8 recipe: worst/mean cosine to bertkit fp32 and tokens/s of each variant, one process, one pass
    each (``--int8-ablation``; docs/benchmarks.md's "int8 variants" table)."""
    import copy

    import torch

    import bertkit
    from bertkit.encoder import pool
    from bertkit.inference.int8 import SMOOTHED, calibrate, calibration_texts, linear_names, quantize_linears
    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()
    seqs = make_workload(n_texts)
    tokens = sum(map(len, seqs))
    base = bertkit.load()

    def embed(enc: bertkit.Encoder, dtype: str) -> tuple[np.ndarray, float]:
        enc.engine.options.dtype = dtype
        out = np.zeros((len(seqs), enc.hidden_size), np.float32)
        t = time.perf_counter()
        with enc.engine.running(enc.device):
            for idx, ids, types, packing in enc.engine.batches(seqs, None, enc.device):
                h = enc._hidden(ids, types, packing).float()
                out[idx] = torch.nn.functional.normalize(pool(h, packing, "mean"), dim=1).numpy()
        return out, tokens / (time.perf_counter() - t)

    ref, _ = embed(base, "fp32")
    cal = base.tokenize(calibration_texts()).ids

    def feed() -> None:
        with torch.inference_mode():
            for _, ids, types, packing in base.engine.batches(cal, None, base.device):
                base.model.forward_packed(ids, packing, types)

    act_all = calibrate(base.model, feed, linear_names(base.model))
    act_max = {k: v for k, v in act_all.items() if k.rsplit(".", 1)[-1] in SMOOTHED}  # the LayerNorm-fed ones
    variants = {  # name: (layers kept in float, smoothing maxima, alpha, dtype of the rest)
        "per-token activations, per-channel weights": ((), None, 0.5, "fp32"),
        "+ mlp_out kept in float": (("mlp_out",), None, 0.5, "fp32"),
        "+ smoothing Wqkv, mlp_in a=0.5 (default)": ((), act_max, 0.5, "fp32"),
        "+ smoothing Wqkv, mlp_in a=0.7": ((), act_max, 0.7, "fp32"),
        "+ smoothing all four layers a=0.5": ((), act_all, 0.5, "fp32"),
        "+ smoothing Wqkv, mlp_in a=0.5, mlp_out kept in bf16": (("mlp_out",), act_max, 0.5, "bf16"),
    }
    rows = {}
    for name, (keep, maxima, alpha, dtype) in variants.items():
        enc = copy.copy(base)
        enc.model, enc.engine = copy.deepcopy(base.model), copy.deepcopy(base.engine)
        quantize_linears(enc.model, keep, maxima, alpha)
        embed(enc, dtype)  # warm-up
        out, tps = embed(enc, dtype)
        cos = (out * ref).sum(1)
        rows[name] = {"cosine_worst": float(cos.min()), "cosine_mean": float(cos.mean()), "tokens_per_s": tps}
        print(f"{name}: {rows[name]}", file=sys.stderr)
    return rows


def ensure_onnx() -> None:
    if (ONNX_DIR / "model.onnx").is_file() and (ONNX_DIR / "model.int8.onnx").is_file():
        return
    from bertkit.inference.onnx import export_onnx

    export_onnx(None, ONNX_DIR, int8=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--quick", action="store_true", help="200 texts, 1 round (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "inference_engine.json"))
    p.add_argument("--int8-ablation", action="store_true",
                   help="compare int8 recipes (smoothing, layers kept in float); writes inference_int8.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.texts, args.rounds = 200, 1
    if args.worker:
        print(json.dumps(worker(args.worker, args.texts, args.threads, Path(args.out_dir))))
        return

    if args.int8_ablation:
        rows = int8_ablation(args.texts, args.threads)
        print(json.dumps(rows, indent=2))
        if not args.quick:
            write_report(HERE / "results" / "inference_int8.json", {
                "benchmark": "inference_int8", "model": "all-MiniLM-L6-v2", "texts": args.texts,
                "threads": args.threads, "reference": "bertkit fp32", "results": rows})
        return
    engines = args.engines.split(",")
    if any(e.startswith("onnxruntime") for e in engines):
        ensure_onnx()
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for e in engines:
                res = spawn(__file__, ["--worker", e, "--texts", str(args.texts), "--threads", str(args.threads),
                                       "--out-dir", tmp], TOKENIZERS_PARALLELISM="false")
                runs[e].append(res)
                print(f"round {r + 1}: {e}: " + ", ".join(f"{k}={v:.1f}" for k, v in res.items()
                                                          if isinstance(v, float)), file=sys.stderr)
        ref = np.load(Path(tmp) / "transformers-fp32.npy") if "transformers-fp32" in engines else None
        summary = {}
        for e in engines:
            keys = [k for k, v in runs[e][0].items() if isinstance(v, float)]
            row = {k: statistics.median(x[k] for x in runs[e]) for k in keys}
            if ref is not None:
                cos = (np.load(Path(tmp) / f"{e}.npy") * ref).sum(1)
                row["cosine_worst"], row["cosine_mean"] = float(cos.min()), float(cos.mean())
            summary[e] = row
    base = summary.get("transformers-fp32")
    if base:
        for row in summary.values():
            row["x_transformers_sorted"] = row["tokens_per_s"] / base["sorted_tokens_per_s"]
    report = {"benchmark": "inference_engine", "model": "all-MiniLM-L6-v2", "texts": args.texts,
              "threads": args.threads, "rounds": args.rounds, "tokens": runs[engines[0]][0]["tokens"],
              "latency_texts": LATENCY_TEXTS, "results": summary, "raw": runs}
    print(json.dumps(summary, indent=2))
    if not args.quick:
        write_report(args.output, report)


if __name__ == "__main__":
    main()
