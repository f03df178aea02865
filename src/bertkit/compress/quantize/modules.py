"""The quantized layer types: what a quantized model is made of, and how each turns back into float.

  WeightOnlyLinear    group-wise int8 / int4 weight, dequantized on every call (a storage format, not fast)
  QuantizedEmbedding  group-wise int8 / int4 embedding table, only the rows looked up dequantized
  StaticInt8Linear    int8 x int8 -> int32 GEMM with activation scales fixed at calibration
  FakeQuantLinear     an ``nn.Linear`` that trains through rounding (QAT, straight-through gradients)

and ``inference/cpu.Int8Linear`` (dynamic int8, per-token activation scales), which this package stores and
loads like the others. ``QUANTIZED`` lists them all; ``to_linear`` is the float ``nn.Linear`` a quantized
Linear stands for.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.compress.quantize.packing import (
    QuantizationError,
    dequantize_groups,
    pack_int4,
    qmax,
    quantize_groups,
    unpack_int4,
)
from bertkit.inference.cpu import QMAX, Int8Linear, int_mm, quantize_rows
from bertkit.inference.int8 import smoothing_factors

# Static int8 on all-MiniLM-L6-v2, calibrated on the built-in sentences, 264 held-out BBC articles and tweets
# (worst / mean cosine of embeddings to fp32): per-tensor scales without smoothing 0.959 / 0.981; smoothing
# alpha 0.5 0.822 / 0.921 (the loss is mlp_out's, fed by GELU: static mlp_out alone 0.849), 0.8 0.989 / 0.997,
# 0.9 0.957 / 0.996.
# Dynamic int8 (inference/int8.py) on the same texts: 0.998 / 0.999, at the same speed within noise.
STATIC_ALPHA = 0.8


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
        in_f, out_f = Int8Linear.check_tensors(weight_t, QuantizationError, scale=(scale, "out"),
                                               input_mul=(input_mul, "in"), bias=(bias, "out"))
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
        q, w_scale = quantize_rows(w, QMAX)  # (out, in), (out,)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(q.t().contiguous(), w_scale * in_scale, 1.0 / (smooth * in_scale), bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()  # (tokens, in)
        xq = torch.mul(x2, self.input_mul).round_().clamp_(-QMAX, QMAX).to(torch.int8)
        y = int_mm(xq, self.weight_t).float()  # (tokens, out) int32 -> float
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


QUANTIZED = (WeightOnlyLinear, StaticInt8Linear, Int8Linear, FakeQuantLinear, QuantizedEmbedding)


def describe_layer(m: nn.Module) -> str:
    """What a quantized layer is, for error messages: "int4 weight-only, group 128", "int8 dynamic", ..."""
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


def to_linear(m: nn.Module) -> nn.Linear:
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
