"""Bytes on disk of a model directory, per kind of tensor, read from the files themselves.

``size_report`` reads the safetensors header (no tensor is loaded) and the ``quantization`` section of
``config.json`` when there is one (a compressed checkpoint, see ``checkpoint.py``), and sums the bytes of each
tensor kind: quantized weights by bits, float Linear weights, scales, sparsity masks, embeddings, the rest.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from bertkit.errors import CheckpointError

KINDS = ("weights_int8", "weights_int4", "weights_float", "scales", "masks", "embeddings", "other")
_SCALE_NAMES = ("scales", "scale", "inv_smooth", "input_mul")


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header bytes including its 8-byte length, {tensor name: {dtype, shape, data_offsets}})."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def size_report(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Bytes on disk of a model directory (compressed or a plain HF one), from the files themselves.

    files: {file name: bytes}; tensors: {name: {kind, dtype, shape, bytes}} from the safetensors header;
    kinds: bytes per kind (``KINDS``: quantized weights by bits, float Linear weights, scales, sparsity
    masks, embeddings, other = biases and LayerNorms) and ``header``; quantized_fp32_bytes: what the quantized
    layers' weights would take in fp32; fp32_bytes: the whole model in dense fp32; *_mb: the same in MB (1e6).
    """
    d = Path(directory)
    files = {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()}
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{d}: no model.safetensors to measure")
    section: dict[str, Any] = {"layers": {}, "sparse": {}}
    if (d / "config.json").is_file():
        section = json.loads((d / "config.json").read_text(encoding="utf-8")).get("quantization") or section
    header_bytes, header = _safetensors_header(weights)
    kinds = dict.fromkeys(KINDS, 0)
    tensors: dict[str, dict[str, Any]] = {}
    fp32 = 0
    for name, info in header.items():
        nbytes = info["data_offsets"][1] - info["data_offsets"][0]
        base = name.removesuffix(".values").removesuffix(".mask")
        layer, _, leaf = base.rpartition(".")
        spec = section["layers"].get(layer)
        if name.endswith(".mask"):
            kind = "masks"
        elif spec is not None and spec["kind"] == "embedding":
            kind = "embeddings"  # quantized table and its scales
        elif spec is not None and leaf in ("qweight", "weight_t"):
            kind = f"weights_int{spec['bits']}"
        elif spec is not None and leaf in _SCALE_NAMES:
            kind = "scales"
        elif "embeddings." in base:
            kind = "embeddings"
        elif base.endswith("weight") and len(section["sparse"].get(base, {}).get("shape", info["shape"])) == 2:
            kind = "weights_float"
        else:
            kind = "other"
        kinds[kind] += nbytes
        tensors[name] = {"kind": kind, "dtype": info["dtype"], "shape": info["shape"], "bytes": nbytes}
        if kind in ("masks", "scales"):
            continue
        if kind.startswith("weights_int") or (spec is not None and leaf == "qweight"):
            fp32 += 4 * spec["in"] * spec["out"]
        elif spec is not None and spec["kind"] == "embedding":  # a quantized embedding's scales
            continue
        elif base in section["sparse"]:
            fp32 += 4 * int(torch.Size(section["sparse"][base]["shape"]).numel())
        else:
            fp32 += 4 * int(torch.Size(info["shape"]).numel())
    quantized_fp32 = sum(4 * s["in"] * s["out"] for s in section["layers"].values())
    total = sum(files.values())
    mb = 1e6
    return {"directory": str(d), "files": files, "total_bytes": total, "total_mb": round(total / mb, 3),
            "weights_file_bytes": files["model.safetensors"], "header_bytes": header_bytes,
            "kinds": kinds, "kinds_mb": {k: round(v / mb, 3) for k, v in kinds.items()},
            "quantized_fp32_bytes": quantized_fp32, "fp32_bytes": fp32, "fp32_mb": round(fp32 / mb, 3),
            "tensors": tensors}
