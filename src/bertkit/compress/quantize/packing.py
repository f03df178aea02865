"""Group-wise quantization grids and bit packing: the arithmetic every quantized format here stores.

``quantize_groups`` gives each row of a weight (out, in) one symmetric scale per group of ``group_size``
consecutive input columns; ``pack_int4`` stores 4-bit levels two a byte; ``pack_bits`` stores a bool mask
(which weights of a sparse tensor are nonzero) eight a byte. ``QuantizationError`` is the error every
quantization step raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.errors import BertkitError

BITS = (4, 8)


class QuantizationError(BertkitError, ValueError):
    """A quantization step that does not apply to this model (already quantized, wrong shape, ...)."""


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


_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """bool (any shape) -> (ceil(n / 8),) uint8: element i (row-major) is bit i % 8 of byte i // 8."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, -flat.numel() % 8)).view(-1, 8)
    return (flat * _BIT_WEIGHTS).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """(ceil(n / 8),) uint8 -> (n,) bool."""
    return ((packed[:, None] >> torch.arange(8)) & 1).reshape(-1)[:n].bool()
