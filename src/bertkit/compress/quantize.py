"""Quantization for compression: low-bit Linear weights, stored as such, with sizes measured from the files.

Four ways to make the encoder's Linear layers low-bit, one checkpoint format for all of them:

- **weight-only, group-wise** (Q-BERT, Shen et al. 2020): ``quantize_weights`` gives each Linear weight
  (out, in) one symmetric scale per group of ``group_size`` consecutive input columns of each output row,
  at 8 or 4 bits (4-bit values packed two a byte). ``WeightOnlyLinear`` dequantizes the whole weight on
  every forward and runs ``F.linear``: correct, small at rest, *slower* than ``nn.Linear`` — a storage
  format, not the fast path (``dequantize_model`` turns it back into float Linears once, at load).
  Rounding alone (no QAT) on all-MiniLM-L6-v2, worst / mean cosine of 264 held-out embeddings to fp32:
  int8 g128 0.9996 / 0.9998; int4 g128 0.891 / 0.935, g64 0.914 / 0.948, g32 0.931 / 0.958.
- **static int8**: ``quantize_static`` fixes each layer's activation scale from calibration batches
  (SmoothQuant per-channel smoothing at alpha 0.8, then one per-tensor scale: measured, see ``STATIC_ALPHA``);
  ``StaticInt8Linear`` runs the same int8 x int8 -> int32 GEMM as ``inference/int8.Int8Linear`` without the
  per-token max at run time. On MiniLM it is less accurate than dynamic int8 and no faster.
- **dynamic int8**: ``inference/int8.py`` (per-token activation scales), exposed here as ``quantize_dynamic``.
- **quantization-aware fine-tuning**: ``prepare_qat`` swaps Linears for ``FakeQuantLinear`` (weights, and
  optionally activations, rounded in forward; straight-through gradients), training runs on the usual
  ``train/engine.py`` Trainer, ``convert_qat`` turns them into ``WeightOnlyLinear`` on the trained grid.

Checkpoint (``save_compressed`` / ``load_compressed``): ``config.json`` with a ``quantization`` section
(scheme, bits, group size, scale dtype, every quantized layer and its kind, every sparse tensor),
tokenizer files, ``bertkit_task.json`` for task models, and ``model.safetensors`` under our module names
(not Hugging Face's: transformers cannot load these tensors anyway):

    <layer>.qweight   int8 (out, in), or uint8 (out, in / 2) for int4       weight-only
    <layer>.scales    fp16 / fp32 (out, ceil(in / group_size))
    <layer>.weight_t  int8 (in, out); .scale (out,) fp32; .inv_smooth / .input_mul (in,) fp32   int8 dynamic / static
    <name>.mask + <name>.values   a Linear weight with >= 50% zeros: bit i of the uint8 mask says whether element
                  i (row-major) is nonzero, values holds the nonzeros in order (int4: packed two a byte). Exact.
    everything else (embeddings, LayerNorms, biases, float Linears) as in the model, fp32.

``size_report`` reads the safetensors header and sums the bytes of each tensor kind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import Encoder, default_max_length, engine_options, pick_device
from bertkit.errors import BertkitError, CheckpointError
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.inference.int8 import (
    DEFAULT_ALPHA,
    QMAX,
    Int8Linear,
    _int_mm,
    calibration_texts,
    quantize_encoder,
    smoothing_factors,
)
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.families import family_of
from bertkit.model.heads import strip_task_keys
from bertkit.model.sentence import SentenceConfig
from bertkit.model.weights import read_state_dict, write_safetensors
from bertkit.task_model import TASK_FILE, TaskModel, build_head
from bertkit.utils.atomic import atomic_write_text

log = logging.getLogger("bertkit")

FORMAT = "bertkit-compressed"
FORMAT_VERSION = 1
BITS = (4, 8)
# quantize_weights / prepare_qat: the encoder layers only, by default (a task head's "dense" is RoBERTa's / DeBERTa's
# / ModernBERT's classifier part, as BERT's pooler is)
DEFAULT_SKIP = ("pooler", "classifier", "dense")
# Static int8 on all-MiniLM-L6-v2, calibrated on the built-in sentences, 264 held-out BBC articles and tweets
# (worst / mean cosine of embeddings to fp32): per-tensor scales without smoothing 0.959 / 0.981; smoothing
# alpha 0.5 0.822 / 0.921 (the loss is mlp_out's, fed by GELU: static mlp_out alone 0.849), 0.8 0.989 / 0.997,
# 0.9 0.957 / 0.996.
# Dynamic int8 (inference/int8.py) on the same texts: 0.998 / 0.999, at the same speed within noise.
STATIC_ALPHA = 0.8
SPARSE_THRESHOLD = 0.5  # a Linear weight with at least this fraction of zeros is stored as bitmask + nonzeros
_DTYPES = {str(d).removeprefix("torch."): d for d in
           (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8)}
_SCALE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class QuantizationError(BertkitError, ValueError):
    """A quantization step that does not apply to this model (already quantized, wrong shape, ...)."""


# ---- group-wise quantization and int4 packing ------------------------------------------------------------
def qmax(bits: int) -> int:
    """Largest symmetric level: 127 for int8, 7 for int4 (-8 is unused, so the grid is symmetric)."""
    if bits not in BITS:
        raise QuantizationError(f"bits must be 4 or 8, got {bits!r}")
    return 2 ** (bits - 1) - 1


def _grouped(w: Tensor, group_size: int) -> Tensor:
    """(out, in) -> (out, groups, group_size), the last group zero-padded when group_size does not divide in."""
    out_f, in_f = w.shape
    n = -(-in_f // group_size)
    return F.pad(w, (0, n * group_size - in_f)).view(out_f, n, group_size)


@torch.no_grad()
def quantize_groups(w: Tensor, bits: int, group_size: int, scale_dtype: torch.dtype = torch.float16
                    ) -> tuple[Tensor, Tensor]:
    """Symmetric group-wise quantization.

    w (out, in) float -> q (out, in) int8 in [-qmax, qmax], scales (out, ceil(in / g)) ``scale_dtype``,
    with g = min(group_size, in) and w ~= q * scale of its group. Scales are rounded to ``scale_dtype``
    *before* q is computed, so what is stored reproduces exactly what the in-memory model computes.
    """
    if group_size < 1:
        raise QuantizationError(f"group_size must be >= 1, got {group_size}")
    top = qmax(bits)
    g = min(group_size, w.shape[1])
    groups = _grouped(w.detach().float(), g)
    # fp16's smallest normal (6e-5) floors the scale: a group whose largest weight is < 8e-3 (int8) then
    # gets absolute error <= 3e-5 rather than an underflowed scale of 0.
    floor = torch.finfo(scale_dtype).tiny
    scales = (groups.abs().amax(dim=2) / top).clamp_min(floor).to(scale_dtype)  # (out, groups)
    q = torch.round(groups / scales.float()[..., None]).clamp_(-top, top)
    return q.view(w.shape[0], -1)[:, :w.shape[1]].to(torch.int8), scales


def dequantize_groups(q: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """q (out, in) int8, scales (out, groups) -> (out, in) fp32."""
    g = min(group_size, q.shape[1])
    return (_grouped(q.float(), g) * scales.float()[..., None]).view(q.shape[0], -1)[:, :q.shape[1]]


def pack_int4(q: Tensor) -> Tensor:
    """(..., n) int8 in [-8, 7], n even -> (..., n / 2) uint8: element 2k in the low nibble, 2k + 1 in the high."""
    if q.shape[-1] % 2:
        raise QuantizationError(f"int4 packing needs an even last dimension, got shape {tuple(q.shape)}")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(p: Tensor) -> Tensor:
    """(..., n / 2) uint8 -> (..., n) int8, the inverse of ``pack_int4``."""
    nibbles = torch.stack([p & 0xF, p >> 4], dim=-1).to(torch.int8)  # (..., n / 2, 2)
    nibbles = torch.where(nibbles >= 8, nibbles - 16, nibbles)  # two's complement of 4 bits
    return nibbles.view(*p.shape[:-1], p.shape[-1] * 2)


# ---- the three quantized Linear modules ------------------------------------------------------------------
class WeightOnlyLinear(nn.Module):
    """A Linear whose weight is stored group-wise quantized (see ``quantize_groups``).

    qweight: (out, in) int8 for 8 bits, (out, in / 2) uint8 for 4 bits (``pack_int4``);
    scales: (out, ceil(in / group_size)) fp16 or fp32; bias: (out,) float or None.
    forward: x (..., in) -> (..., out): dequantizes the whole weight to x's dtype on every call, then
    ``F.linear``. Correct, not fast (a dequantize per call on top of the float GEMM): this is how the
    weights are stored; ``dequantize_model`` makes plain ``nn.Linear`` layers of them once.
    """

    def __init__(self, qweight: Tensor, scales: Tensor, bias: Tensor | None, bits: int, group_size: int,
                 in_features: int) -> None:
        super().__init__()
        qmax(bits)
        out_f = qweight.shape[0]
        want = (torch.int8, (out_f, in_features)) if bits == 8 else (torch.uint8, (out_f, in_features // 2))
        if bits == 4 and in_features % 2:
            raise QuantizationError(f"int4 needs an even number of input features, got {in_features}")
        if qweight.dtype != want[0] or tuple(qweight.shape) != want[1]:
            raise QuantizationError(f"int{bits} qweight must be {want[0]} of shape {want[1]}, got "
                                    f"{qweight.dtype} of shape {tuple(qweight.shape)}")
        g = min(group_size, in_features)
        groups = -(-in_features // g)
        if not scales.is_floating_point() or tuple(scales.shape) != (out_f, groups):
            raise QuantizationError(f"scales must be float of shape {(out_f, groups)} (group size {g}), got "
                                    f"{scales.dtype} of shape {tuple(scales.shape)}")
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise QuantizationError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.bits, self.group_size = bits, g
        self.in_features, self.out_features = in_features, out_f

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 128,
                    scale_dtype: torch.dtype = torch.float16) -> WeightOnlyLinear:
        if bits == 4 and linear.in_features % 2:
            raise QuantizationError(f"int4 needs an even number of input features, got {linear.in_features}")
        q, scales = quantize_groups(linear.weight, bits, group_size, scale_dtype)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(pack_int4(q) if bits == 4 else q, scales, bias, bits, group_size, linear.in_features)

    def int_weight(self) -> Tensor:
        """(out, in) int8 levels (int4 unpacked)."""
        return unpack_int4(self.qweight) if self.bits == 4 else self.qweight

    def dequantize(self) -> Tensor:
        """(out, in) fp32."""
        return dequantize_groups(self.int_weight(), self.scales, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group_size}, "
                f"scales={str(self.scales.dtype).removeprefix('torch.')}")


class QuantizedEmbedding(nn.Module):
    """An ``nn.Embedding`` stored group-wise quantized along the hidden dimension (each row its own scales).

    qweight: (num, dim) int8, or (num, dim / 2) uint8 for 4 bits; scales: (num, ceil(dim / group_size)).
    forward: ids (...) -> (..., dim) fp32, dequantizing only the rows looked up. The word embeddings are
    half of all-MiniLM-L6-v2's weights (30522 x 384), so a small checkpoint has to shrink them too.
    """

    def __init__(self, qweight: Tensor, scales: Tensor, bits: int, group_size: int, embedding_dim: int,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        qmax(bits)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bits, self.group_size = bits, min(group_size, embedding_dim)
        self.num_embeddings, self.embedding_dim, self.padding_idx = qweight.shape[0], embedding_dim, padding_idx
        # size_report and the checkpoint describe every quantized module by (in, out) and bias
        self.in_features, self.out_features, self.bias = embedding_dim, qweight.shape[0], None

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int, group_size: int = 128,
                       scale_dtype: torch.dtype = torch.float16) -> QuantizedEmbedding:
        if bits == 4 and emb.embedding_dim % 2:
            raise QuantizationError(f"int4 needs an even embedding size, got {emb.embedding_dim}")
        q, scales = quantize_groups(emb.weight, bits, group_size, scale_dtype)
        return cls(pack_int4(q) if bits == 4 else q, scales, bits, group_size, emb.embedding_dim, emb.padding_idx)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.qweight[ids.reshape(-1)]  # (n, dim) int8 or (n, dim / 2) uint8
        q = unpack_int4(rows) if self.bits == 4 else rows
        out = dequantize_groups(q, self.scales[ids.reshape(-1)], self.group_size)  # (n, dim)
        return out.view(*ids.shape, self.embedding_dim)

    def dequantize(self) -> Tensor:
        """(num, dim) fp32."""
        q = unpack_int4(self.qweight) if self.bits == 4 else self.qweight
        return dequantize_groups(q, self.scales, self.group_size)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, group={self.group_size}"


class StaticInt8Linear(nn.Module):
    """int8 x int8 -> int32 GEMM with activation scales fixed at calibration.

    weight_t: (in, out) int8, per-output-channel scales; scale: (out,) fp32 = weight scale x input scale;
    input_mul: (in,) fp32 = 1 / (smoothing factor x input scale), so quantizing x is one multiply, a round
    and a clamp; bias: (out,) or None.
    forward: x (..., in) -> (..., out). Unlike ``Int8Linear`` no per-token max is taken at run time: a value
    beyond the calibrated range saturates at +-127 levels.
    """

    def __init__(self, weight_t: Tensor, scale: Tensor, input_mul: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        in_f, out_f = weight_t.shape
        if weight_t.dtype != torch.int8:
            raise QuantizationError(f"weight_t must be int8, got {weight_t.dtype}")
        for name, t, n in (("scale", scale, out_f), ("input_mul", input_mul, in_f), ("bias", bias, out_f)):
            if t is not None and tuple(t.shape) != (n,):
                raise QuantizationError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("scale", scale.float())
        self.register_buffer("input_mul", input_mul.float())
        self.register_buffer("bias", None if bias is None else bias.float())
        self.in_features, self.out_features = in_f, out_f

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, act_max: Tensor, alpha: float | None = STATIC_ALPHA
                    ) -> StaticInt8Linear:
        """act_max: (in,) calibration max |x_j|; alpha: SmoothQuant's migration strength, None for no smoothing."""
        w = linear.weight.detach().float()  # (out, in)
        smooth = torch.ones_like(act_max) if alpha is None else smoothing_factors(act_max, linear.weight, alpha)
        w = w * smooth[None, :]
        # After smoothing, x_j / s_j peaks at act_max_j / s_j: one per-tensor scale covers every channel.
        in_scale = (act_max.float() / smooth).max().clamp_min(1e-8) / QMAX
        w_scale = w.abs().amax(dim=1).clamp_min(1e-8) / QMAX  # (out,)
        q = torch.round(w / w_scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(q.t().contiguous(), w_scale * in_scale, 1.0 / (smooth * in_scale), bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()  # (tokens, in)
        xq = torch.mul(x2, self.input_mul).round_().clamp_(-QMAX, QMAX).to(torch.int8)
        y = _int_mm(xq, self.weight_t).float()  # (tokens, out) int32 -> float
        y = y.mul_(self.scale) if self.bias is None else torch.addcmul(self.bias, y, self.scale)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, static activation scale"


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` that trains through quantization (QAT).

    forward: x (..., in) -> (..., out) with the weight rounded to ``bits`` (symmetric, per output channel,
    or per ``group_size`` columns) and, with ``act_bits``, x rounded per token. Straight-through estimator:
    the forward sees the rounded values, the backward passes gradients to the float weight (and x) as if
    no rounding happened. Parameters keep ``nn.Linear``'s names, so optimizers and checkpoints see no change.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8,
                 group_size: int | None = None, act_bits: int | None = None, device: Any = None) -> None:
        super().__init__(in_features, out_features, bias, device=device)
        qmax(bits)
        if act_bits is not None:
            qmax(act_bits)
        self.bits, self.act_bits = bits, act_bits
        self.group_size = in_features if group_size is None else min(group_size, in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None,
                    act_bits: int | None = None) -> FakeQuantLinear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size, act_bits,
                device="meta")
        m.weight, m.bias = linear.weight, linear.bias  # the same Parameters: training continues on them
        return m

    def quantized_weight(self) -> Tensor:
        """(out, in) fp32: the weight on the quantization grid (what ``convert_qat`` stores)."""
        q, scales = quantize_groups(self.weight, self.bits, self.group_size)
        return dequantize_groups(q, scales, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight + (self.quantized_weight().to(self.weight.dtype) - self.weight).detach()  # STE
        if self.act_bits is not None:
            top = qmax(self.act_bits)
            step = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / top  # (..., 1) per token
            x = x + (torch.round(x.detach() / step) * step - x.detach())
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        act = f", act int{self.act_bits} per token" if self.act_bits else ""
        return f"{super().extra_repr()}, fake int{self.bits}, group={self.group_size}{act}"


_QUANTIZED = (WeightOnlyLinear, StaticInt8Linear, Int8Linear, FakeQuantLinear, QuantizedEmbedding)


def describe_layer(m: nn.Module) -> str:
    if isinstance(m, QuantizedEmbedding):
        return f"int{m.bits} embedding, group {m.group_size}"
    if isinstance(m, WeightOnlyLinear):
        return f"int{m.bits} weight-only, group {m.group_size}"
    if isinstance(m, StaticInt8Linear):
        return "int8 static"
    if isinstance(m, Int8Linear):
        return "int8 dynamic"
    if isinstance(m, FakeQuantLinear):
        return f"fake-quant int{m.bits} (QAT; convert_qat first)"
    return type(m).__name__


# ---- finding and replacing layers ------------------------------------------------------------------------
def _module(model: Any) -> nn.Module:
    """The nn.Module a TaskModel / Encoder wraps (the head, or the encoder), or ``model`` itself."""
    if isinstance(model, TaskModel):
        return model.head
    if isinstance(model, Encoder):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected a TaskModel, Encoder or nn.Module, got {type(model).__name__}")


def _encoder(model: Any) -> nn.Module:
    """The encoder of a TaskModel / Encoder / task head (its layers are what int8 quantizes), else the module."""
    m = _module(model)
    return m.encoder if isinstance(getattr(m, "encoder", None), BertModel) else m


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern names a module or any module path component: "pooler", "layers.0.mlp_out", "classifier"."""
    return any(f".{p}." in f".{name}." for p in patterns)


def _refuse_quantized(module: nn.Module, step: str, skip: Iterable[str] = ()) -> None:
    skip = tuple(skip)
    for name, m in module.named_modules():
        if isinstance(m, _QUANTIZED) and not _matches(name, skip):
            raise QuantizationError(f"{step}: layer {name!r} is already quantized ({describe_layer(m)}); "
                                    f"{step} starts from float nn.Linear layers: apply it to the float model")


def _float_linears(module: nn.Module, skip: Iterable[str]) -> list[str]:
    skip = tuple(skip)
    return [n for n, m in module.named_modules() if type(m) is nn.Linear and not _matches(n, skip)]


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)


# ---- 1. weight-only ----------------------------------------------------------------------------------------
@torch.no_grad()
def quantize_weights(model: Any, bits: int = 8, group_size: int = 128, skip: Iterable[str] = DEFAULT_SKIP,
                     scale_dtype: str = "fp16") -> list[str]:
    """Replace each float ``nn.Linear`` of ``model`` (TaskModel, Encoder or nn.Module) whose name matches no
    entry of ``skip`` by a ``WeightOnlyLinear`` at ``bits`` (8 or 4), in place. Returns the names replaced.

    By default the encoder layers' Linears (Wqkv, attn_out, mlp_in, mlp_out); ``skip=()`` takes the pooler
    and classifier too. Refuses a model that already has quantized layers, naming the first.
    """
    qmax(bits)
    if scale_dtype not in _SCALE_DTYPES:
        raise QuantizationError(f"scale_dtype must be one of {', '.join(_SCALE_DTYPES)}, got {scale_dtype!r}")
    module = _module(model)
    step = f"quantize_weights(bits={bits})"
    _refuse_quantized(module, step, skip)
    names = _float_linears(module, skip)
    for name in names:
        lin = module.get_submodule(name)
        if bits == 4 and lin.in_features % 2:
            raise QuantizationError(f"{step}: layer {name!r} has {lin.in_features} input features; int4 packs "
                                    "two a byte and needs an even number (skip the layer)")
    for name in names:
        lin = module.get_submodule(name)
        _replace(module, name, WeightOnlyLinear.from_linear(lin, bits, group_size, _SCALE_DTYPES[scale_dtype]))
    log.info("weight-only int%d: %d linear layers quantized (groups of %d input columns, %s scales)", bits,
             len(names), group_size, scale_dtype)
    return names


@torch.no_grad()
def quantize_embeddings(model: Any, bits: int = 8, group_size: int = 128, scale_dtype: str = "fp16") -> list[str]:
    """Replace the word and position tables (``embeddings.word``, ``embeddings.position`` when the model has
    one) by ``QuantizedEmbedding`` at ``bits``, in place. The token-type table (2 rows) stays float. Refuses an
    already quantized table. Returns the names replaced."""
    qmax(bits)
    if scale_dtype not in _SCALE_DTYPES:
        raise QuantizationError(f"scale_dtype must be one of {', '.join(_SCALE_DTYPES)}, got {scale_dtype!r}")
    module = _module(model)
    names = [n for n, m in module.named_modules()
             if n.rpartition(".")[2] in ("word", "position") and n.rpartition(".")[0].endswith("embeddings")
             and isinstance(m, nn.Embedding | QuantizedEmbedding)]
    if not names:
        raise QuantizationError("quantize_embeddings: the model has no 'embeddings.word' table")
    for name in names:
        emb = module.get_submodule(name)
        if isinstance(emb, QuantizedEmbedding):
            raise QuantizationError(f"quantize_embeddings(bits={bits}): {name!r} is already quantized "
                                    f"({describe_layer(emb)})")
    for name in names:
        emb = module.get_submodule(name)
        _replace(module, name, QuantizedEmbedding.from_embedding(emb, bits, group_size, _SCALE_DTYPES[scale_dtype]))
        log.info("embeddings int%d: %s (%d x %d) quantized in groups of %d", bits, name, emb.num_embeddings,
                 emb.embedding_dim, group_size)
    return names


def _to_linear(m: nn.Module) -> nn.Linear:
    """A float nn.Linear computing what the quantized module ``m`` stores (activation rounding aside)."""
    if isinstance(m, WeightOnlyLinear):
        w = m.dequantize()
    elif isinstance(m, StaticInt8Linear):  # x * input_mul * (q * scale) = x (q * w_scale * s_j^-1)
        w = (m.weight_t.t().float() * m.scale[:, None]) * m.input_mul[None, :]
    elif isinstance(m, Int8Linear):  # scale has the activations' 1/127 folded in; inv_smooth undoes smoothing
        w = m.weight_t.t().float() * (m.scale[:, None] * QMAX)
        if m.inv_smooth is not None:
            w = w * m.inv_smooth[None, :]
    elif isinstance(m, FakeQuantLinear):
        w = m.quantized_weight()
    else:
        raise QuantizationError(f"cannot dequantize a {type(m).__name__}")
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, device="meta")
    lin.weight = nn.Parameter(w.detach().float().contiguous())
    if m.bias is not None:
        lin.bias = nn.Parameter(m.bias.detach().float().clone())
    return lin


@torch.no_grad()
def dequantize_model(model: Any) -> list[str]:
    """Replace every quantized layer by a float ``nn.Linear`` with the weights it stores. Returns the names."""
    module = _module(model)
    names = [n for n, m in module.named_modules() if isinstance(m, _QUANTIZED)]
    for name in names:
        m = module.get_submodule(name)
        if isinstance(m, QuantizedEmbedding):
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx, device="meta")
            emb.weight = nn.Parameter(m.dequantize().contiguous())
            _replace(module, name, emb)
        else:
            _replace(module, name, _to_linear(m))
    return names


# ---- 2. static and dynamic int8 ----------------------------------------------------------------------------
def calibration_runner(model: TaskModel | Encoder, texts: list[str] | None = None) -> Callable[[], None]:
    """A function that runs ``model`` (encoder, pooler, and a TaskModel's classifier) over ``texts`` (default: the
    built-in 62 calibration sentences) in the engine's batches: ``quantize_static``'s ``calibration_batches_fn``."""
    encoder, tokenizer, engine = _encoder(model), model.tokenizer, model.engine
    ids = tokenizer.encode(texts or calibration_texts(), max_length=encoder.config.max_tokens).ids

    def run() -> None:
        device = next(encoder.parameters()).device
        for _, flat, types, packing in engine.batches(ids, None, device):
            if isinstance(model, TaskModel):
                model.head(flat, packing, types)
            else:
                encoder.pool(encoder.forward_packed(flat, packing, types), packing)

    return run


class _Observer(nn.Module):
    """Stands in for a Linear during calibration: records the max |x| of each input channel, then runs it.

    Not a forward hook: at inference the encoder adds ``attn_out`` / ``mlp_out`` into the residual with its
    own in-place GEMM on ``linear.weight`` (``bert._add_linear_``) and never calls those modules, so hooks on
    them would not fire; a module that is not an ``nn.Linear`` is called.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.act_max: Tensor | None = None  # (in,)

    def forward(self, x: Tensor) -> Tensor:
        a = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        self.act_max = a if self.act_max is None else torch.maximum(self.act_max, a)
        return self.linear(x)


def observe_activations(module: nn.Module, run: Callable[[], object], names: Iterable[str]) -> dict[str, Tensor]:
    """Per-input-channel max |x| (in,) of each named Linear of ``module`` over ``run()``; layers ``run`` never
    reached are absent."""
    observers = {n: _Observer(module.get_submodule(n)) for n in names}
    for n, o in observers.items():
        _replace(module, n, o)
    try:
        with torch.no_grad():
            run()
    finally:
        for n, o in observers.items():
            _replace(module, n, o.linear)
    return {n: o.act_max for n, o in observers.items() if o.act_max is not None}


@torch.no_grad()
def quantize_static(model: Any, calibration_batches_fn: Callable[[], object] | None = None, *,
                    alpha: float | None = STATIC_ALPHA, keep: Iterable[str] = ()) -> list[str]:
    """Make the encoder's Linears ``StaticInt8Linear`` with activation scales fixed from calibration, in place.

    calibration_batches_fn: runs the model on calibration batches, once, while each layer's per-input-channel
    max |x| is recorded; default, for a TaskModel / Encoder, ``calibration_runner(model)``. A layer it never
    reaches stays float (logged).
    alpha: SmoothQuant strength (per-channel smoothing, then one per-tensor scale); None: per-tensor only.
    The default 0.8 measured best (see ``STATIC_ALPHA``), and still below dynamic int8 on MiniLM: activations
    beyond the calibrated range saturate, which per-token scales avoid. Prefer ``quantize_dynamic`` unless
    the fixed scales are the point (e.g. an int8 runtime without dynamic quantization).
    keep: layer names left in float. Layers whose sizes are not multiples of 8 stay float (int8 GEMM kernels).
    """
    encoder = _encoder(model)
    _refuse_quantized(encoder, "quantize_static")
    if calibration_batches_fn is None:
        if not isinstance(model, TaskModel | Encoder):
            raise QuantizationError("quantize_static on a bare module needs calibration_batches_fn (a function "
                                    "that runs the model on calibration batches)")
        calibration_batches_fn = calibration_runner(model)
    names = [n for n in _float_linears(encoder, keep)
             if not (encoder.get_submodule(n).in_features % 8 or encoder.get_submodule(n).out_features % 8)]
    was_training = encoder.training
    encoder.eval()
    act_max = observe_activations(encoder, calibration_batches_fn, names)
    encoder.train(was_training)
    missed = [n for n in names if n not in act_max]
    if missed:
        log.warning("static int8: calibration never ran %s; left in float", ", ".join(missed))
    done = [n for n in names if n in act_max]
    for name in done:
        _replace(encoder, name, StaticInt8Linear.from_linear(encoder.get_submodule(name), act_max[name], alpha))
    log.info("static int8: %d linear layers quantized (per-channel weights, per-tensor activation scales%s)",
             len(done), f", smoothed alpha {alpha}" if alpha is not None else "")
    return done


def quantize_dynamic(model: Any, tokenizer: Tokenizer | None = None, *, texts: list[str] | None = None,
                     keep: Iterable[str] = (), alpha: float = DEFAULT_ALPHA) -> list[str]:
    """Dynamic int8 (``inference/int8.quantize_encoder``: per-token activation scales, SmoothQuant smoothing
    calibrated on ``texts``), in place. ``tokenizer`` defaults to a TaskModel's / Encoder's own."""
    encoder = _encoder(model)
    _refuse_quantized(encoder, "quantize_dynamic")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise QuantizationError("quantize_dynamic on a bare module needs the tokenizer (for calibration texts)")
    return quantize_encoder(encoder, tokenizer, getattr(model, "engine", None) or Engine(), texts, keep, alpha)


# ---- 5. quantization-aware training ----------------------------------------------------------------------
def prepare_qat(model: Any, bits: int = 8, group_size: int | None = None, act_bits: int | None = None,
                skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Swap the float Linears (as ``quantize_weights`` picks them) for ``FakeQuantLinear``, in place, sharing
    their Parameters. group_size None: one scale per output channel. Returns the names."""
    module = _module(model)
    _refuse_quantized(module, f"prepare_qat(bits={bits})", skip)
    names = _float_linears(module, skip)
    for name in names:
        _replace(module, name, FakeQuantLinear.from_linear(module.get_submodule(name), bits, group_size, act_bits))
    log.info("QAT: %d linear layers fake-quantized to int%d%s", len(names), bits,
             f", activations int{act_bits} per token" if act_bits else "")
    return names


@torch.no_grad()
def convert_qat(model: Any, dequantize: bool = False) -> list[str]:
    """Replace each ``FakeQuantLinear`` by the ``WeightOnlyLinear`` it trained for (same bits and groups, fp16
    scales), or with ``dequantize`` by an ``nn.Linear`` holding its grid values. Activation fake-quant is
    dropped (for int8 activations, convert with ``dequantize=True`` and then ``quantize_dynamic``)."""
    module = _module(model)
    names = [n for n, m in module.named_modules() if isinstance(m, FakeQuantLinear)]
    if not names:
        raise QuantizationError("convert_qat: the model has no FakeQuantLinear layers; call prepare_qat first")
    for name in names:
        m = module.get_submodule(name)
        new = _to_linear(m) if dequantize else WeightOnlyLinear.from_linear(m, m.bits, m.group_size)
        _replace(module, name, new)
    return names


# ---- 3. the compressed checkpoint --------------------------------------------------------------------------
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """bool (any shape) -> (ceil(n / 8),) uint8: element i (row-major) is bit i % 8 of byte i // 8."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, -flat.numel() % 8)).view(-1, 8)
    return (flat * _BIT_WEIGHTS).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """(ceil(n / 8),) uint8 -> (n,) bool."""
    return ((packed[:, None] >> torch.arange(8)) & 1).reshape(-1)[:n].bool()


_STORABLE = (nn.Linear, nn.LayerNorm, nn.Embedding, WeightOnlyLinear, StaticInt8Linear, Int8Linear,
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
    module, encoder = _module(model), _encoder(model)
    for name, m in module.named_modules():
        if isinstance(m, FakeQuantLinear):
            raise QuantizationError(f"save_compressed: layer {name!r} is a FakeQuantLinear (QAT); call "
                                    "convert_qat(model) first")
        # load_compressed rebuilds the model from config.json: only modules it knows how to make can be stored
        if type(m) not in _STORABLE and (any(True for _ in m.parameters(recurse=False))
                                         or any(True for _ in m.buffers(recurse=False))):
            raise QuantizationError(f"save_compressed: module {name!r} is a {type(m).__name__}, which this format "
                                    "does not store (e.g. a low-rank layer: densify it, or save it with its own "
                                    "format)")
    layers = {n: _layer_spec(m) for n, m in module.named_modules() if isinstance(m, _QUANTIZED)}
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
    dataclasses.replace(encoder.config, extra=extra).save(d)
    write_safetensors(state, d)
    model.tokenizer.save(d)
    if isinstance(model, TaskModel):
        atomic_write_text(d / TASK_FILE, json.dumps({"task": model.task, "max_length": model.max_length,
                                                     "labels": model.labels}, indent=2) + "\n")
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
    cfg = EncoderConfig.from_json_file(d / "config.json")
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
        out = torch.zeros(n, dtype=torch.int8 if dtype == "int4" else _DTYPES[dtype])
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
        _replace(module, name, _build_layer(name, spec, state, str(weights)))
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
        return TaskModel(module, tokenizer, task, labels, max_length, d, eng)
    enc = Encoder(encoder, tokenizer, default_max_length(d, cfg.max_tokens), name=str(d),
                  source_dir=d, engine=eng)
    enc.sentence = SentenceConfig.read(d, cfg.hidden_size)
    return enc


# ---- 4. size accounting ------------------------------------------------------------------------------------
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
