"""Attention over a fused QKV projection, in three execution paths.

``reference``  eager softmax(QK^T / sqrt(d) + additive mask) V over the padded batch: the readable
               yardstick the other two are tested against (and HF transformers' "eager").
``sdpa``       ``torch.nn.functional.scaled_dot_product_attention`` over the padded batch with a
               boolean key mask (HF transformers' "sdpa").
``unpadded``   tokens of all sequences packed into ``(total_tokens, 3 * hidden)``; attention runs
               once per *run* of consecutive equal-length sequences, so no padding exists anywhere.
               Length-sorted batches are mostly one or two runs, i.e. a few large batched matmuls;
               unsorted batches degrade to one small matmul pair per sequence.

Relative positions (``position_embedding_type`` rope / alibi) enter here: ``rope`` is the
``(cos, sin)`` table for positions 0..L-1, rotating q and k; ``alibi`` is the ``(heads, L, L)``
score bias. Positions restart at 0 in every sequence, so every path slices the same tables.

On this CPU (torch 2.13, head_dim 32) an explicit matmul-softmax-matmul per run measured faster than
SDPA per run (6 vs 11 ms for 32 unsorted sequences of 8-128 tokens, see benchmarks/README), so the
unpadded path uses it; the kernel is logged once when first used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.model.dropout import dropout

log = logging.getLogger("bertkit")

PATHS = ("reference", "sdpa", "unpadded")
# Upper bound on one attention-score block, (n_seqs * heads, length, length) elements: keeps the
# (length x length) scores of a long batch from allocating hundreds of MB at once.
SCORE_BLOCK_ELEMENTS = 1 << 23
_logged: set[str] = set()


def log_path_once(path: str, detail: str) -> None:
    if path not in _logged:
        _logged.add(path)
        log.info("execution path: %s (%s)", path, detail)


@dataclass
class Packing:
    """Where each sequence lies in a packed ``(total_tokens, ...)`` tensor.

    ``cu_seqlens``: (batch + 1,) int64 offsets, sequence i is tokens ``cu_seqlens[i]:cu_seqlens[i+1]``.
    ``runs``: (first_token, n_sequences, seqlen) for each maximal run of consecutive sequences of equal
    length; these can be viewed as one ``(n_sequences, seqlen, ...)`` block without a copy.
    """

    cu_seqlens: Tensor
    lengths: list[int]
    runs: list[tuple[int, int, int]]

    @property
    def total_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device | str = "cpu") -> Packing:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"every sequence needs at least one token, got lengths {lengths[:8]}")
        runs: list[tuple[int, int, int]] = []
        start = 0
        for n in lengths:
            if runs and runs[-1][2] == n:
                s, k, _ = runs[-1]
                runs[-1] = (s, k + 1, n)
            else:
                runs.append((start, 1, n))
            start += n
        cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
        cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
        return cls(cu.to(device), list(lengths), runs)

    def segment_ids(self) -> Tensor:
        """(total_tokens,) index of the sequence each token belongs to."""
        lengths = torch.tensor(self.lengths, device=self.cu_seqlens.device)
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=lengths.device), lengths)

    def position_ids(self) -> Tensor:
        """(total_tokens,) position of each token inside its own sequence (0 at each [CLS])."""
        seg = self.segment_ids()
        return torch.arange(self.total_tokens, device=seg.device) - self.cu_seqlens[seg]


# ---- relative positions ---------------------------------------------------------------------
def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """RoPE tables, GPT-NeoX / ModernBERT layout: positions (...,) -> cos, sin each (..., head_dim).

    Frequency f_i = theta^(-2i / head_dim) for i < head_dim / 2, repeated for both halves of the head.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., head_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q and k (..., seq, head_dim) by their positions' angles; cos, sin (seq, head_dim)."""
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # tables are fp32; keep q's dtype under autocast
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def alibi_slopes(num_heads: int) -> Tensor:
    """(heads,) ALiBi slopes (Press et al. 2022): 2^(-8/n), 2^(-16/n), ... for n a power of two; otherwise
    those of the nearest lower power of two, then every other slope of the next power (as MosaicBERT)."""
    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    n = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_2(n) + power_of_2(2 * n)[0::2][: num_heads - n]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, length: int) -> Tensor:
    """Symmetric encoder ALiBi (MosaicBERT): slopes (heads,) -> (heads, length, length) of -slope * |i - j|."""
    pos = torch.arange(length, device=slopes.device)
    distance = (pos[None, :] - pos[:, None]).abs().to(slopes.dtype)  # (length, length)
    return -slopes[:, None, None] * distance


# ---- attention --------------------------------------------------------------------------------
def padded_attention(qkv: Tensor, mask: Tensor, num_heads: int, kernel: str, dropout_p: float = 0.0,
                     rope: tuple[Tensor, Tensor] | None = None, alibi: Tensor | None = None) -> Tensor:
    """Attention over a padded batch.

    qkv:   (batch, seq, 3 * hidden)
    mask:  (batch, seq) bool, True where the token is real
    rope:  (cos, sin) each (>= seq, head_dim), or None
    alibi: (heads, >= seq, >= seq) score bias, or None
    returns (batch, seq, hidden)
    """
    b, s, three_h = qkv.shape
    hd = three_h // (3 * num_heads)
    q, k, v = qkv.view(b, s, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # each (batch, heads, seq, hd)
    if rope is not None:
        q, k = apply_rope(q, k, rope[0][:s], rope[1][:s])
    bias = None if alibi is None else alibi[:, :s, :s].to(q.dtype)  # (heads, seq, seq)
    if kernel == "reference":
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # (batch, heads, seq, seq)
        if bias is not None:
            scores = scores + bias
        # Additive mask with the dtype's minimum, exactly as BERT / HF "eager" build it.
        additive = (~mask)[:, None, None, :].to(scores.dtype) * torch.finfo(scores.dtype).min
        probs = torch.softmax(scores + additive, dim=-1)
        probs = F.dropout(probs, dropout_p, training=dropout_p > 0)
        ctx = torch.matmul(probs, v)
    elif kernel == "sdpa":
        attn_mask = mask[:, None, None, :]  # (batch, 1, 1, seq) bool
        if bias is not None:  # SDPA takes one mask: the float bias with padded keys at the dtype's minimum
            attn_mask = bias.masked_fill(~attn_mask, torch.finfo(bias.dtype).min)  # (batch, heads, seq, seq)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    else:
        raise ValueError(f"unknown padded attention kernel {kernel!r}; expected 'reference' or 'sdpa'")
    return ctx.transpose(1, 2).reshape(b, s, num_heads * hd)


def unpadded_attention(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float = 0.0,
                       rope: tuple[Tensor, Tensor] | None = None, alibi: Tensor | None = None) -> Tensor:
    """Attention over packed tokens, one batched matmul pair per run of equal-length sequences.

    qkv: (total_tokens, 3 * hidden)
    rope, alibi: as for ``padded_attention``, covering the longest sequence
    returns (total_tokens, hidden)
    """
    t, three_h = qkv.shape
    hd = three_h // (3 * num_heads)
    scale = 1.0 / math.sqrt(hd)
    qkv = qkv.view(t, 3, num_heads, hd)
    ctx = qkv.new_empty(t, num_heads, hd)
    for start, n, length in _split_runs(packing.runs, num_heads):
        end = start + n * length
        # One copy into (3, n * heads, length, hd) so both bmm calls read contiguous blocks.
        q, k, v = (qkv[start:end].view(n, length, 3, num_heads, hd)
                   .permute(2, 0, 3, 1, 4).reshape(3, n * num_heads, length, hd))
        # Every sequence of a run spans positions 0..length-1, so the tables' first rows serve them all.
        if rope is not None:
            q, k = apply_rope(q, k, rope[0][:length], rope[1][:length])
        scores = torch.baddbmm(q.new_empty(n * num_heads, length, length), q, k.transpose(1, 2),
                               beta=0.0, alpha=scale)  # (n * heads, length, length)
        if alibi is not None:
            scores.view(n, num_heads, length, length).add_(alibi[:, :length, :length].to(scores.dtype))
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            probs = dropout(probs, dropout_p)
        out = torch.bmm(probs, v)  # (n * heads, length, hd)
        ctx[start:end].view(n, length, num_heads, hd).copy_(out.view(n, num_heads, length, hd).transpose(1, 2))
    return ctx.view(t, num_heads * hd)


def _split_runs(runs: list[tuple[int, int, int]], num_heads: int) -> list[tuple[int, int, int]]:
    out = []
    for start, n, length in runs:
        step = max(1, SCORE_BLOCK_ELEMENTS // (num_heads * length * length))
        for i in range(0, n, step):
            out.append((start + i * length, min(step, n - i), length))
    return out
