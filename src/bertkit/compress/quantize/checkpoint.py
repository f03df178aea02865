"""The compressed checkpoint: one format for every quantized (and sparse) model, saved and loaded back.

``save_compressed`` / ``load_compressed``: ``config.json`` with a ``quantization`` section (scheme, bits, group
size, scale dtype, every quantized layer and its kind, every sparse tensor), tokenizer files,
``bertkit_task.json`` for task models, and ``model.safetensors`` under our module names (not Hugging Face's:
transformers cannot load these tensors anyway):

    <layer>.qweight   int8 (out, in), or uint8 (out, in / 2) for int4       weight-only
    <layer>.scales    fp16 / fp32 (out, ceil(in / group_size))
    <layer>.weight_t  int8 (in, out); .scale (out,) fp32; .inv_smooth / .input_mul (in,) fp32   int8 dynamic / static
    <name>.mask + <name>.values   a Linear weight with >= 50% zeros: bit i of the uint8 mask says whether element
                  i (row-major) is nonzero, values holds the nonzeros in order (int4: packed two a byte). Exact.
    everything else (embeddings, LayerNorms, biases, float Linears) as in the model, fp32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.compress.quantize.modules import (
    QUANTIZED,
    FakeQuantLinear,
    QuantizedEmbedding,
    StaticInt8Linear,
    WeightOnlyLinear,
)
from bertkit.compress.quantize.packing import QuantizationError, pack_bits, pack_int4, unpack_bits, unpack_int4
from bertkit.compress.quantize.swap import dequantize_model, encoder_of, module_of, replace_module
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import Encoder, engine_options
from bertkit.errors import CheckpointError
from bertkit.inference.cpu import Int8Linear
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import TASK_FILE, default_max_length
from bertkit.model.families import family_of, read_config, write_config
from bertkit.model.heads import build_head, strip_task_keys
from bertkit.model.sentence import SentenceConfig
from bertkit.model.weights import read_state_dict, write_safetensors
from bertkit.task_model import TaskModel
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import pick_device

log = logging.getLogger("bertkit")

FORMAT = "bertkit-compressed"
FORMAT_VERSION = 1
SPARSE_THRESHOLD = 0.5  # a Linear weight with at least this fraction of zeros is stored as bitmask + nonzeros
DTYPES = {str(d).removeprefix("torch."): d for d in
           (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8)}


STORABLE = (nn.Linear, nn.LayerNorm, nn.Embedding, WeightOnlyLinear, StaticInt8Linear, Int8Linear,
             QuantizedEmbedding)


def _layer_spec(m: nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, QuantizedEmbedding):  # in = embedding size, out = rows
        return {"kind": "embedding", "bits": m.bits, "group_size": m.group_size, "padding_idx": m.padding_idx,
                "scale_dtype": str(m.scales.dtype).removeprefix("torch."), **spec}
    if isinstance(m, WeightOnlyLinear):
        return {"kind": "weight_only", "bits": m.bits, "group_size": m.group_size,
                "scale_dtype": str(m.scales.dtype).removeprefix("torch."), **spec}
    if isinstance(m, StaticInt8Linear):
        return {"kind": "int8_static", "bits": 8, **spec}
    return {"kind": "int8_dynamic", "bits": 8, "smooth": m.inv_smooth is not None, **spec}


def _weight_tensors(module: nn.Module) -> dict[str, int | None]:
    """Names of the Linear weight tensors (the sparse-storage candidates) -> their int4-packed bits or None."""
    out: dict[str, int | None] = {}
    for name, m in module.named_modules():
        p = f"{name}." if name else ""
        if type(m) is nn.Linear:
            out[p + "weight"] = None
        elif isinstance(m, WeightOnlyLinear):
            out[p + "qweight"] = 4 if m.bits == 4 else None
        elif isinstance(m, StaticInt8Linear | Int8Linear):
            out[p + "weight_t"] = None
    return out


def save_compressed(model: TaskModel | Encoder, directory: str | os.PathLike[str],
                    sparse_threshold: float | None = SPARSE_THRESHOLD) -> Path:
    """Write ``model`` (quantized or not) as a compressed checkpoint; see the module docstring for the format.

    sparse_threshold: a Linear weight with at least this fraction of exact zeros (after quantization) is
    stored as a bitmask + its nonzeros; None stores every tensor dense.
    """
    if not isinstance(model, TaskModel | Encoder):
        raise TypeError(f"save_compressed takes a TaskModel or an Encoder, got {type(model).__name__}")
    module, encoder = module_of(model), encoder_of(model)
    for name, m in module.named_modules():
        if isinstance(m, FakeQuantLinear):
            raise QuantizationError(f"save_compressed: layer {name!r} is a FakeQuantLinear (QAT); call "
                                    "convert_qat(model) first")
        # load_compressed rebuilds the model from config.json: only modules it knows how to make can be stored
        if type(m) not in STORABLE and (any(True for _ in m.parameters(recurse=False))
                                         or any(True for _ in m.buffers(recurse=False))):
            raise QuantizationError(f"save_compressed: module {name!r} is a {type(m).__name__}, which this format "
                                    "does not store (e.g. a low-rank layer: densify it, or save it with its own "
                                    "format)")
    layers = {n: _layer_spec(m) for n, m in module.named_modules() if isinstance(m, QUANTIZED)}
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    sparse: dict[str, dict[str, Any]] = {}
    if sparse_threshold is not None:
        for name, int4 in _weight_tensors(module).items():
            t = unpack_int4(state[name]) if int4 else state[name]
            nonzero = t != 0
            if 1.0 - nonzero.float().mean().item() < sparse_threshold:
                continue
            values = t.reshape(-1)[nonzero.reshape(-1)]
            if int4:
                values = pack_int4(F.pad(values, (0, values.numel() % 2)))
            del state[name]
            state[name + ".mask"], state[name + ".values"] = pack_bits(nonzero), values.contiguous()
            sparse[name] = {"shape": list(t.shape), "dtype": "int4" if int4 else str(t.dtype).removeprefix("torch."),
                            "nnz": int(nonzero.sum())}
    kinds = sorted({s["kind"] for s in layers.values()})
    bits = sorted({s["bits"] for s in layers.values()})
    groups = sorted({s["group_size"] for s in layers.values() if "group_size" in s})
    section = {"format": FORMAT, "version": FORMAT_VERSION,
               "scheme": kinds[0] if len(kinds) == 1 else ("none" if not kinds else "mixed"),
               "bits": bits[0] if len(bits) == 1 else (None if not bits else bits),
               "group_size": groups[0] if len(groups) == 1 else (None if not groups else groups),
               "pooler": encoder.pooler is not None, "layers": layers, "sparse": sparse}

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    extra = {**encoder.config.extra, "quantization": section}
    if isinstance(model, TaskModel):
        head = model.head
        labels = {i: name for i, name in enumerate(model.labels)} or {i: f"LABEL_{i}" for i in range(head.num_labels)}
        arch = family_of(encoder.config).architecture(encoder.config.model_type, head.kind)
        extra.update({"architectures": [arch],
                      "id2label": {str(i): str(n) for i, n in labels.items()},
                      "label2id": {str(n): int(i) for i, n in labels.items()}, "problem_type": head.problem_type})
    write_config(dataclasses.replace(encoder.config, extra=extra), d)
    write_safetensors(state, d)
    model.tokenizer.save(d)
    if isinstance(model, TaskModel):
        atomic_write_text(d / TASK_FILE, json.dumps(model.task_meta(), indent=2) + "\n")
    else:
        (d / TASK_FILE).unlink(missing_ok=True)  # a task file left from an earlier save would make this a task model
        atomic_write_text(d / "sentence_bert_config.json",
                          json.dumps({"max_seq_length": model.max_length, "do_lower_case": False}, indent=2) + "\n")
        model.sentence.save(d, model.max_length)  # its pooling, Dense, Normalize and prompts, when it has them
    log.info("compressed checkpoint %s: %s, %d quantized layers, %d sparse tensors", d, section["scheme"],
             len(layers), len(sparse))
    return d


def _read_section(d: Path) -> tuple[EncoderConfig, dict[str, Any]]:
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {d / 'config.json'})")
    cfg = read_config(d / "config.json")
    section = cfg.extra.pop("quantization", None)
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        raise CheckpointError(f"{d}: config.json has no '{FORMAT}' quantization section, so this is not a "
                              "compressed checkpoint; load it with TaskModel.from_pretrained or bertkit.load")
    if section.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{d}: compressed format version {section.get('version')!r}; this bertkit reads "
                              f"version {FORMAT_VERSION}")
    return cfg, section


def _dense(name: str, spec: dict[str, Any], state: dict[str, Tensor], source: str) -> Tensor:
    """The dense tensor a mask + values pair stands for (int4: re-packed as stored in the module)."""
    try:
        mask, values = state.pop(name + ".mask"), state.pop(name + ".values")
        shape, dtype, nnz = tuple(spec["shape"]), spec["dtype"], int(spec["nnz"])
        n = int(torch.Size(shape).numel())
        nonzero = unpack_bits(mask, n)
        if dtype == "int4":
            values = unpack_int4(values)[:nnz]
        if int(nonzero.sum()) != nnz or values.numel() != nnz:
            raise ValueError(f"mask has {int(nonzero.sum())} nonzeros and values {values.numel()}, config says {nnz}")
        out = torch.zeros(n, dtype=torch.int8 if dtype == "int4" else DTYPES[dtype])
        out[nonzero] = values
        out = out.view(shape)
        return pack_int4(out) if dtype == "int4" else out
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{source}: sparse tensor {name!r} cannot be rebuilt ({type(e).__name__}: {e})") from None


def _build_layer(name: str, spec: dict[str, Any], state: dict[str, Tensor], source: str) -> nn.Module:
    p = f"{name}."
    try:
        bias = state.get(p + "bias") if spec["bias"] else None
        if spec["kind"] == "embedding":
            return QuantizedEmbedding(state[p + "qweight"], state[p + "scales"], int(spec["bits"]),
                                      int(spec["group_size"]), int(spec["in"]), spec.get("padding_idx"))
        if spec["kind"] == "weight_only":
            return WeightOnlyLinear(state[p + "qweight"], state[p + "scales"], bias, int(spec["bits"]),
                                    int(spec["group_size"]), int(spec["in"]))
        if spec["kind"] == "int8_static":
            return StaticInt8Linear(state[p + "weight_t"], state[p + "scale"], state[p + "input_mul"], bias)
        if spec["kind"] == "int8_dynamic":
            inv = state[p + "inv_smooth"] if spec["smooth"] else None
            return Int8Linear.from_quantized(state[p + "weight_t"], state[p + "scale"], bias, inv)
        raise ValueError(f"unknown kind {spec['kind']!r}")
    except KeyError as e:
        raise CheckpointError(f"{source}: layer {name!r} ({spec.get('kind')}): missing tensor {e}") from None
    except ValueError as e:  # QuantizationError included
        raise CheckpointError(f"{source}: layer {name!r} ({spec.get('kind')}): {e}") from None


def load_compressed(directory: str | os.PathLike[str], device: str | torch.device | None = None,
                    dequantize: bool = False, engine: EngineOptions | None = None, dtype: str | None = None,
                    path: str = "unpadded") -> TaskModel | Encoder:
    """Rebuild a ``save_compressed`` directory: a TaskModel (when it has ``bertkit_task.json``) or an Encoder,
    with its quantized layers as saved (WeightOnly / StaticInt8 / Int8 Linear), or float Linears with
    ``dequantize`` (weights dequantized once, here). engine / dtype: as ``TaskModel.from_pretrained``; int8 and
    the onnx backend are refused on a quantized checkpoint (its layers already are what they are)."""
    d = Path(directory)
    cfg, section = _read_section(d)
    options = engine_options(engine, dtype=dtype)
    if section["layers"] and (options.int8 or options.backend != "torch"):
        raise QuantizationError(f"{d}: engine int8={options.int8}, backend={options.backend!r} do not apply to a "
                                f"checkpoint already quantized ({section['scheme']}); load it with the defaults")
    weights = d / "model.safetensors"
    state = read_state_dict(weights)
    for name, spec in section["sparse"].items():
        state[name] = _dense(name, spec, state, str(weights))

    is_task = (d / TASK_FILE).is_file()
    encoder = BertModel(cfg, add_pooler=bool(section["pooler"]), path=path)
    if is_task:
        meta = json.loads((d / TASK_FILE).read_text(encoding="utf-8"))
        task = meta["task"]
        id2label = cfg.extra.get("id2label") or {}
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)] if task != "regression" else []
        strip_task_keys(cfg)
        module: nn.Module = build_head(encoder, task, max(len(labels), 1))
    else:
        module = encoder
    for name, spec in section["layers"].items():
        try:
            old = module.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{weights}: quantized layer {name!r} is not in this model") from None
        shape = ((old.embedding_dim, old.num_embeddings) if type(old) is nn.Embedding else
                 (old.in_features, old.out_features) if type(old) is nn.Linear else None)
        if shape != (spec["in"], spec["out"]) or (type(old) is nn.Embedding) != (spec["kind"] == "embedding"):
            raise CheckpointError(f"{weights}: layer {name!r} is {spec['in']} -> {spec['out']} in the file, "
                                  f"{old} in the model config")
        replace_module(module, name, _build_layer(name, spec, state, str(weights)))
    ours = module.state_dict()
    wrong = [f"{k} ({v.dtype}, model {ours[k].dtype})" for k, v in state.items()
             if k in ours and v.dtype != ours[k].dtype]
    if wrong:
        raise CheckpointError(f"{weights}: tensors of the wrong dtype: {', '.join(wrong[:5])}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())[:400]
        raise CheckpointError(f"{weights}: tensors do not match the config: {first}") from None
    if dequantize:
        dequantize_model(module)

    tokenizer = Tokenizer.from_dir(d)
    eng = Engine(options)
    dev = pick_device(device)
    module.to(dev).eval()
    eng.prepare(encoder, tokenizer, dev, str(d))
    if is_task:
        max_length = int(meta.get("max_length") or min(512, cfg.max_tokens))
        tm = TaskModel(module, tokenizer, task, labels, max_length, d, eng, scheme=meta.get("scheme"))
        tm.read_thresholds(meta, d / TASK_FILE)  # a multi-label model's tuned thresholds carry over
        return tm
    enc = Encoder(encoder, tokenizer, default_max_length(d, cfg.max_tokens), name=str(d),
                  source_dir=d, engine=eng)
    enc.sentence = SentenceConfig.read(d, cfg.hidden_size)
    return enc
