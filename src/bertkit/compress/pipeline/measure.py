"""Measuring a step's model as it is served: its metric, size on disk, parameters, sparsity and throughput.

The task's main metric (``MAIN_METRIC``) on the eval split and on test, the size on disk (the directory's files;
not ``train/``), parameters as a float model counts them, and engine tokens/s over the first ``throughput_texts``
texts of the eval split (tokenized once; median of ``TIMED_PASSES`` passes after a warm-up), with ratios to step 0.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bertkit.compress import quantize, sparse
from bertkit.compress.pipeline.context import Run
from bertkit.data.features import Features
from bertkit.task_model import TaskModel

TIMED_PASSES = 3


def seconds_per_pass(tm: TaskModel, feats: Features, passes: int = TIMED_PASSES) -> float:
    """Median seconds of ``passes`` engine passes (task logits, as ``predict`` runs them) over ``feats``, after one
    warm-up pass."""
    times = []
    for i in range(passes + 1):
        start = time.perf_counter()
        tm.logits(feats)  # returns host arrays: the time includes the device's work
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_weights(module: torch.nn.Module) -> int:
    """Weights of the model as a float model would count them: a quantized layer counts in x out (+ bias), a
    low-rank layer its factors."""
    n = 0
    for m in module.modules():
        if isinstance(m, quantize.QUANTIZED):  # their weights are buffers
            n += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        else:
            n += sum(p.numel() for p in m.parameters(recurse=False))
    return n


def weight_sparsity(tm: TaskModel) -> float:
    """Share of exact zeros in the encoder layers' Linear weights (what ``prune`` prunes)."""
    zeros = total = 0
    for layer in tm.head.encoder.layers:
        for name in sparse.PRUNABLE:
            m = getattr(layer, name)
            w = (m.weight if isinstance(m, torch.nn.Linear) else m.weight_t if hasattr(m, "weight_t") else
                 m.int_weight() if isinstance(m, quantize.WeightOnlyLinear) else None)
            if w is not None:
                zeros += int((w == 0).sum())
                total += w.numel()
    return zeros / total if total else 0.0


def dir_bytes(directory: Path) -> int:
    """Bytes of the directory's own files (not of its sub-folders, e.g. train/)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def measure(run: Run, tm: TaskModel, directory: Path) -> dict[str, Any]:
    """Metrics on the eval split and test, size on disk, parameters, engine throughput of a served model."""
    split = run.eval_split
    metrics = {"eval": tm.evaluate(run.splits[split])}
    if "test" in run.splits and len(run.splits["test"]):
        metrics["test"] = metrics["eval"] if split == "test" else tm.evaluate(run.splits["test"])
    timed = run.features(tm, split, run.throughput_texts)
    tokens = int(timed.lengths.sum())
    seconds = run.clock(tm, timed) if run.clock else seconds_per_pass(tm, timed)
    sizes = quantize.size_report(directory)
    enc = tm.head.encoder
    return {"eval": metrics["eval"][run.metric], "test": metrics["test"][run.metric] if "test" in metrics else None,
            "size_mb": round(dir_bytes(directory) / 1e6, 4), "parameters": count_weights(tm.head),
            "sparsity": round(weight_sparsity(tm), 4), "layers": len(enc.layers),
            "heads": sum(layer.num_heads for layer in enc.layers),
            "intermediate": sum(enc.config.layer_intermediate_size(i) for i in range(len(enc.layers))),
            "tokens_per_s": round(tokens / seconds, 1), "throughput_tokens": tokens,
            "size_report": {"fp32_mb": sizes["fp32_mb"], "kinds_mb": sizes["kinds_mb"]}, "metrics": metrics}


def with_ratios(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    row["size_x"] = round(base["size_mb"] / row["size_mb"], 3)
    row["speed_x"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    row["drop_points"] = round(100 * (base["eval"] - row["eval"]), 2)
    row["test_drop_points"] = (round(100 * (base["test"] - row["test"]), 2)
                               if row["test"] is not None and base["test"] is not None else None)
    return row


def _version() -> str:
    # from the installed package's metadata: importing the top-level bertkit here would import the loader, a
    # layer above compress
    try:
        return importlib.metadata.version("bertkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine the throughput was measured on, and the versions that ran."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "bertkit": _version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
