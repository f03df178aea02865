"""A step's model on disk: which format a directory holds, loading it as it is served, and saving it.

Float models are in the HF task layout (``bertkit evaluate/predict/serve`` read it), low-rank ones in
``save_lowrank``'s, quantized (and sparse) ones in ``save_compressed``'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bertkit.compress import lowrank, quantize
from bertkit.errors import CheckpointError
from bertkit.task_model import TaskModel


def model_format(directory: str | os.PathLike[str]) -> tuple[str, str | None]:
    """(format, quantized state) of a task model directory: format "hf", "lowrank" or "compressed"; state None
    for a float model, else what it is ("int8", "int4", "low-rank")."""
    d = Path(directory)
    f = d / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {f})")
    cfg = json.loads(f.read_text(encoding="utf-8"))
    section = cfg.get("quantization")
    if isinstance(section, dict) and section.get("format") == quantize.FORMAT:
        bits = section.get("bits")
        if not section.get("layers"):
            return "compressed", None
        return "compressed", f"int{min(bits) if isinstance(bits, list) else bits}"
    if isinstance(cfg.get(lowrank.LOWRANK_KEY), dict):
        return "lowrank", "low-rank"
    return "hf", None


def load_model(directory: str | os.PathLike[str], device: str | torch.device | None = None,
               served: bool = True) -> TaskModel:
    """A step's task model from its directory, whatever the format. served: as it is served (weight-only layers
    dequantized once to float Linears, int8 layers as int8 modules); False: as stored (WeightOnlyLinear)."""
    d = Path(directory)
    fmt, _ = model_format(d)
    if fmt == "compressed":
        # weight-only Linears dequantize the whole weight on every call: served, they are float once, at load
        kinds = {spec["kind"] for spec in _section(d)["layers"].values()} - {"embedding"}
        tm = quantize.load_compressed(d, device=device, dequantize=served and kinds == {"weight_only"})
    elif fmt == "lowrank":
        tm = lowrank.load_lowrank(d, device=device)
    else:
        tm = TaskModel.from_pretrained(d, device=device)
    if not isinstance(tm, TaskModel):
        raise CheckpointError(f"{d}: an encoder, not a task model (no bertkit_task.json); compress a fine-tuned model")
    return tm


def _section(d: Path) -> dict[str, Any]:
    return json.loads((d / "config.json").read_text(encoding="utf-8"))["quantization"]


def save_model(tm: TaskModel, directory: Path, fmt: str) -> None:
    """Write ``tm`` into ``directory`` in format ``fmt`` (as ``model_format`` names them)."""
    if fmt == "hf":
        tm.save_pretrained(directory)
    elif fmt == "lowrank":
        lowrank.save_lowrank(tm, directory)
    else:
        quantize.save_compressed(tm, directory)
