"""The inference-engine flags shared by ``embed``, ``predict``, ``evaluate``, ``fill-mask`` and ``serve``."""

from __future__ import annotations

import argparse

from bertkit.inference.engine import BACKENDS, DTYPES, EngineOptions


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference engine")
    g.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="fp32 (exact, the default), bf16 (autocast; fast on CPUs with AVX512-BF16/AMX), fp16 (GPU), "
                        "or auto: the fastest precision of this CPU (int8 / bf16 / fp32) whose mean-pooled states "
                        "keep a worst cosine >= 0.99 to fp32 on the calibration texts")
    g.add_argument("--int8", action="store_true",
                   help="int8 linear layers (per-channel weights, per-token smoothed activations; on the int8 kernel "
                        "this CPU runs fastest, logged at load)")
    g.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="onnx: run model.onnx with onnxruntime (see `bertkit export onnx`)")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    g.add_argument("--max-batch-tokens", type=int, default=EngineOptions.max_batch_tokens,
                   help="real tokens per engine batch (batches are length-sorted)")
    g.add_argument("--batch-size", type=int, default=None, help="at most this many texts per batch")


def engine_from_args(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(dtype=args.dtype, int8=args.int8, backend=args.backend, threads=args.threads,
                         max_batch_tokens=args.max_batch_tokens,
                         max_batch_size=args.batch_size or EngineOptions.max_batch_size)
