"""Attention over a fused QKV projection, in three execution paths.

``reference``  eager softmax(scale * QK^T + bias + additive mask) V over the padded batch: the readable
               yardstick the other two are tested against (and HF transformers' "eager").
``sdpa``       ``torch.nn.functional.scaled_dot_product_attention`` over the padded batch with a boolean
               key mask, or a float one when the scores carry a position bias (HF transformers' "sdpa").
``unpadded``   tokens of all sequences packed into ``(total_tokens, 3 * hidden)``; attention runs once per
               *run* of consecutive equal-length sequences, so no padding exists anywhere. Length-sorted
               batches are mostly one or two runs, i.e. a few large batched matmuls; unsorted batches
               degrade to one small matmul pair per sequence.

Positions enter through two arguments that ``positions.py`` builds (see there): ``rope``, the ``(cos, sin)``
table rotating q and k, and ``bias``, a function of q and k giving an additive score term (ALiBi, MPNet's bucket
bias, DeBERTa's disentangled scores, a sliding window). Positions restart at 0 in every sequence, so every path
uses the same tables, sliced to its length. ``scale`` multiplies q.k (1 / sqrt(head_dim); DeBERTa's is smaller).

Each path is one function (``ATTENTION[path]``); the model picks it once per forward and hands it to the layers,
which never look at the path's name.

On a 2-core CPU (torch 2.13, head_dim 32) an explicit matmul-softmax-matmul per run measured faster than
SDPA per run (6 vs 11 ms for 32 unsorted sequences of 8-128 tokens, an early benchmarks/embed_throughput.py
run), so the unpadded path uses it; the kernel is logged once when first used.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.model.dropout import dropout
from bertkit.model.positions import (  # noqa: F401  (re-exported: the position helpers lived here before)
    Rope,
    ScoreBias,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_cos_sin,
)

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

    @property
    def device(self) -> torch.device:
        return self.cu_seqlens.device

    @property
    def max_length(self) -> int:
        return max(self.lengths)

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

    def to(self, device: torch.device | str) -> Packing:
        """The same packing with ``cu_seqlens`` on ``device`` (lengths and runs are Python lists)."""
        return self if self.cu_seqlens.device == torch.device(device) else dataclasses.replace(
            self, cu_seqlens=self.cu_seqlens.to(device))

    def segment_ids(self) -> Tensor:
        """(total_tokens,) index of the sequence each token belongs to."""
        lengths = torch.tensor(self.lengths, device=self.cu_seqlens.device)
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=lengths.device), lengths)

    def position_ids(self) -> Tensor:
        """(total_tokens,) position of each token inside its own sequence (0 at each [CLS])."""
        seg = self.segment_ids()
        return torch.arange(self.total_tokens, device=seg.device) - self.cu_seqlens[seg]


# ---- the three paths --------------------------------------------------------------------------------
def padded_attention(qkv: Tensor, mask: Tensor, num_heads: int, kernel: str, dropout_p: float = 0.0,
                     rope: Rope | None = None, bias: ScoreBias | Tensor | None = None,
                     scale: float | None = None) -> Tensor:
    """Attention over a padded batch.

    qkv:   (batch, seq, 3 * heads * head_dim)
    mask:  (batch, seq) bool, True where the token is real
    rope:  (cos, sin) each (>= seq, head_dim), or None
    bias:  a score bias (``positions.ScoreBias``), or a (heads, >= seq, >= seq) tensor, or None
    scale: multiplier of q.k (default 1 / sqrt(head_dim))
    returns (batch, seq, heads * head_dim)
    """
    b, s, three_h = qkv.shape
    hd = three_h // (3 * num_heads)
    scale = hd ** -0.5 if scale is None else scale
    q, k, v = qkv.view(b, s, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # each (batch, heads, seq, hd)
    if rope is not None:
        q, k = apply_rope(q, k, rope[0][:s], rope[1][:s])
    extra = _bias_term(bias, q, k)  # broadcastable to (batch, heads, seq, seq), or None
    if kernel == "reference":
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (batch, heads, seq, seq)
        if extra is not None:
            scores = scores + extra
        # Additive mask with the dtype's minimum, exactly as BERT / HF "eager" build it.
        additive = (~mask)[:, None, None, :].to(scores.dtype) * torch.finfo(scores.dtype).min
        probs = torch.softmax(scores + additive, dim=-1)
        probs = F.dropout(probs, dropout_p, training=dropout_p > 0)
        ctx = torch.matmul(probs, v)
    elif kernel == "sdpa":
        attn_mask = mask[:, None, None, :]  # (batch, 1, 1, seq) bool
        if extra is not None:  # SDPA takes one mask: the float bias with padded keys at the dtype's minimum
            attn_mask = extra.expand(b, num_heads, s, s).masked_fill(~attn_mask, torch.finfo(extra.dtype).min)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    else:
        raise ValueError(f"unknown padded attention kernel {kernel!r}; expected 'reference' or 'sdpa'")
    return ctx.transpose(1, 2).reshape(b, s, num_heads * hd)


def unpadded_attention(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float = 0.0,
                       rope: Rope | None = None, bias: ScoreBias | Tensor | None = None,
                       scale: float | None = None) -> Tensor:
    """Attention over packed tokens, one batched matmul pair per run of equal-length sequences.

    qkv: (total_tokens, 3 * heads * head_dim)
    rope, bias, scale: as for ``padded_attention``, covering the longest sequence
    returns (total_tokens, heads * head_dim)
    """
    t, three_h = qkv.shape
    hd = three_h // (3 * num_heads)
    scale = hd ** -0.5 if scale is None else scale
    qkv = qkv.view(t, 3, num_heads, hd)
    ctx = qkv.new_empty(t, num_heads, hd)
    for start, n, length in split_runs(packing.runs, num_heads):
        end = start + n * length
        # One copy into (3, n, heads, length, hd) so the matmuls read contiguous blocks.
        block = qkv[start:end].view(n, length, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        # Every sequence of a run spans positions 0..length-1, so the tables' first rows serve them all.
        if rope is None:
            q, k, v = block.contiguous()
        elif torch.is_grad_enabled():
            q, k, v = block.contiguous()
            q, k = apply_rope(q, k, rope[0][:length], rope[1][:length])
        else:  # inference: rotate while copying, no temporaries (rope was ~30% of ModernBERT's time)
            q, k, v = _rope_copy(block, rope[0][:length], rope[1][:length])
        extra = _bias_term(bias, q, k)  # computed on (n, heads, L, hd) views before flattening
        q, k, v = (x.reshape(n * num_heads, length, hd) for x in (q, k, v))
        scores = torch.baddbmm(q.new_empty(n * num_heads, length, length), q, k.transpose(1, 2),
                               beta=0.0, alpha=scale)  # (n * heads, length, length)
        if extra is not None:
            scores.view(n, num_heads, length, length).add_(extra)
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            probs = dropout(probs, dropout_p)
        out = torch.bmm(probs, v)  # (n * heads, length, hd)
        ctx[start:end].view(n, length, num_heads, hd).copy_(out.view(n, num_heads, length, hd).transpose(1, 2))
    return ctx.view(t, num_heads * hd)


def _rope_copy(block: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """block (3, n, heads, L, hd) [q; k; v] of any strides -> a contiguous copy with q and k rotated by rope.

    ``apply_rope``'s x * cos + rotate_half(x) * sin written half by half into the copy (the tables repeat their
    first half): no rotate_half / cat / product temporaries. No autograd (``out=``), so inference only.
    """
    out = torch.empty(block.shape, dtype=block.dtype, device=block.device)
    out[2].copy_(block[2])
    half = block.shape[-1] // 2
    c, s = cos[:, :half].to(block.dtype), sin[:, :half].to(block.dtype)  # (L, hd / 2)
    x1, x2 = block[:2, ..., :half], block[:2, ..., half:]
    lo, hi = out[:2, ..., :half], out[:2, ..., half:]
    torch.mul(x1, c, out=lo)
    lo.addcmul_(x2, s, value=-1.0)  # x1 cos - x2 sin
    torch.mul(x2, c, out=hi)
    hi.addcmul_(x1, s)  # x2 cos + x1 sin
    return out


def _bias_term(bias: ScoreBias | Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """The additive score term for q, k (n, heads, L, hd): a ScoreBias is called; a (heads, >=L, >=L) tensor
    (ALiBi as earlier callers pass it) is sliced."""
    if bias is None:
        return None
    if isinstance(bias, Tensor):
        length = q.shape[-2]
        return bias[..., :length, :length].to(q.dtype)
    return bias(q, k)


def split_runs(runs: list[tuple[int, int, int]], num_heads: int) -> list[tuple[int, int, int]]:
    """Runs (first_token, n_sequences, length) cut so one block's scores stay under ``SCORE_BLOCK_ELEMENTS``."""
    out = []
    for start, n, length in runs:
        step = max(1, SCORE_BLOCK_ELEMENTS // (num_heads * length * length))
        for i in range(0, n, step):
            out.append((start + i * length, min(step, n - i), length))
    return out


_split_runs = split_runs  # deprecated name (compress/distill.py used it)


# ---- one function per path, chosen once per forward ------------------------------------------------------
# attend(qkv, num_heads, dropout_p, rope, bias, scale) -> context, with the batch layout bound in.
Attend = Callable[[Tensor, int, float, "Rope | None", "ScoreBias | None", float], Tensor]


def packed_attend(packing: Packing) -> Attend:
    return lambda qkv, heads, p, rope, bias, scale: unpadded_attention(qkv, packing, heads, p, rope, bias, scale)


def padded_attend(mask: Tensor, kernel: str) -> Attend:
    return lambda qkv, heads, p, rope, bias, scale: padded_attention(qkv, mask, heads, kernel, p, rope, bias, scale)


PATH_DETAIL = {
    "reference": "padded batch, eager matmul-softmax-matmul attention with additive mask",
    "sdpa": "padded batch, torch scaled_dot_product_attention with boolean mask (float with a position bias)",
    "unpadded": "packed (total_tokens, hidden), attention per run of equal-length sequences, no padding",
}


def to_grid(ids: Tensor, types: Tensor, packing: Packing, pad_id: int
            ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
    """Packed (total_tokens,) ids and type ids -> padded (batch, max_len) ids, bool mask, type ids, and the
    (sequence, position) index of each packed token in the grid."""
    b, s = packing.batch_size, max(packing.lengths)
    seg, pos = packing.segment_ids(), packing.position_ids()
    grid = torch.full((b, s), pad_id, dtype=torch.long, device=ids.device)
    grid_types = torch.zeros_like(grid)
    mask = torch.zeros((b, s), dtype=torch.bool, device=ids.device)
    grid[seg, pos], grid_types[seg, pos], mask[seg, pos] = ids, types, True
    return grid, mask, grid_types, (seg, pos)


def attn_implementation_of(attn_implementation: str | None, path: str | None = None) -> str:
    """The attention path a loader builds (one of ``PATHS``), named as transformers names it (``attn_implementation``);
    ``path`` is its deprecated name, still accepted for one release."""
    if path is not None:
        warnings.warn("path= is deprecated: use attn_implementation= (one of " + ", ".join(PATHS) + ")",
                      DeprecationWarning, stacklevel=3)
        if attn_implementation is not None and attn_implementation != path:
            raise ValueError(f"attn_implementation={attn_implementation!r} and its old name path={path!r} disagree")
        attn_implementation = path
    attn_implementation = attn_implementation or "unpadded"
    if attn_implementation not in PATHS:
        raise ValueError(f"attn_implementation must be one of {', '.join(PATHS)}, got {attn_implementation!r}")
    return attn_implementation
