"""Where position information enters attention, for every encoder family.

Absolute position tables live in the embeddings (``bert.py``); everything relative lives here:

``rope``          rotates q and k by their position (RoFormer / GPT-NeoX layout, as ModernBERT and MosaicBERT
                  variants); ModernBERT uses one base for global layers and another for sliding-window layers.
``alibi``         adds ``-slope_h * |i - j|`` to the scores (Press et al.; MosaicBERT's symmetric encoder form).
``bucket_bias``   adds a learned per-head bias of the bucketed distance ``j - i`` (T5 buckets; MPNet), one table
                  shared by every layer.
``disentangled``  DeBERTa's content-to-position (c2p) and position-to-content (p2c) scores: q_i . P_k[r(i, j)] and
                  k_j . P_q[r(i, j)], with ``r`` the log-bucketed distance ``i - j`` and P the relative embeddings
                  projected by each layer.
``window``        a sliding window: position pairs further apart than half the window are masked (ModernBERT's
                  local layers).

Each is decided once, when the model is built (``RelativePositions.__init__`` and each layer's choice of rope base,
window and bias), and costs nothing when unused. Per forward, ``RelativePositions.tables`` computes every table once
for the longest sequence; because all of them depend only on ``i - j`` (or on ``i`` alone for rope), the top-left
``L x L`` block of a table is exactly the table of a length-``L`` sequence, which is what lets the padding-free path
(each run of equal-length sequences at its own length) and the padded paths share them.

A score bias is a function ``bias(q, k) -> Tensor`` of the queries and keys ``(n, heads, L, head_dim)`` returning
an additive term broadcastable to the scores ``(n, heads, L, L)``, already scaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bertkit.model.config import EncoderConfig

ScoreBias = Callable[[Tensor, Tensor], Tensor]
Rope = tuple[Tensor, Tensor]  # (cos, sin), each (length, head_dim)


# ---- rope ---------------------------------------------------------------------------------------
def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> Rope:
    """RoPE tables, GPT-NeoX / ModernBERT layout: positions (...,) -> cos, sin each (..., head_dim).

    Frequency f_i = 1 / theta^(2i / head_dim) for i < head_dim / 2, repeated for both halves of the head
    (computed as transformers does, so the tables match its bit for bit).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
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


# ---- alibi --------------------------------------------------------------------------------------
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


# ---- buckets ------------------------------------------------------------------------------------
def t5_buckets(relative: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """MPNet's (bidirectional T5) buckets of ``relative = j - i``: half the buckets per direction, exact below
    ``num_buckets // 4``, logarithmic up to ``max_distance``, the last bucket beyond."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).to(torch.long) * half
    n = n.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).to(torch.long)
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return ret + torch.where(n < max_exact, n, large)


def log_buckets(relative: Tensor, bucket_size: int, max_position: int) -> Tensor:
    """DeBERTa-v2's log buckets of ``relative = i - j``: exact within ``bucket_size // 2``, logarithmic beyond.

    Written as transformers' ``make_log_bucket_position`` (same float ops), so the buckets match it exactly.
    """
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.tensor(mid - 1).type_as(relative),
                          torch.abs(relative))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.type_as(log_pos), log_pos * sign).to(torch.long)


def window_bias(length: int, half_window: int, device: torch.device) -> Tensor:
    """(length, length) float32: 0 where ``|i - j| <= half_window``, the dtype's minimum elsewhere (as HF eager)."""
    pos = torch.arange(length, device=device)
    outside = (pos[None, :] - pos[:, None]).abs() > half_window
    return torch.zeros(length, length, device=device).masked_fill_(outside, torch.finfo(torch.float32).min)


# ---- the per-forward tables -------------------------------------------------------------------------
@dataclass
class Tables:
    """Position tables of one forward, for sequences of up to ``length`` tokens, shared by every layer.

    rope:      rope base -> (cos, sin), each (length, head_dim)
    bias:      (heads, length, length) ALiBi or MPNet bucket bias, or None
    windows:   half window -> (length, length) additive mask
    rel:       DeBERTa: (rows, hidden) normalized relative embeddings, only the rows distances up to ``length`` use
    rel_index: DeBERTa: (2 * length - 1,) the row of ``rel`` for each distance i - j = -(length - 1) .. length - 1
    """

    length: int
    rope: dict[float, Rope] = field(default_factory=dict)
    bias: Tensor | None = None
    windows: dict[int, Tensor] = field(default_factory=dict)
    rel: Tensor | None = None
    rel_index: Tensor | None = None


class RelativePositions(nn.Module):
    """The model-level parameters of relative positions (MPNet's bucket table; DeBERTa's relative embeddings and
    their LayerNorm) and the per-forward ``tables``. Our names: ``bucket``, ``embeddings``, ``norm``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bucket = (nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_attention_heads)
                       if cfg.relative_attention == "bucket_bias" else None)
        self.embeddings: nn.Embedding | None = None
        self.norm: nn.LayerNorm | None = None
        if cfg.relative_attention == "disentangled":
            self.embeddings = nn.Embedding(2 * deberta_span(cfg), cfg.hidden_size)
            if cfg.norm_rel_ebd == "layer_norm":
                self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        thetas = {layer_rope_theta(cfg, i) for i in range(cfg.num_hidden_layers)} - {None}
        self.thetas = sorted(thetas)
        self.half_windows = sorted({w for i in range(cfg.num_hidden_layers) if (w := layer_half_window(cfg, i))})

    def tables(self, length: int, device: torch.device) -> Tables:
        cfg = self.cfg
        t = Tables(length)
        positions = torch.arange(length, device=device)
        for theta in self.thetas:
            t.rope[theta] = rope_cos_sin(positions, cfg.head_dim, theta)
        if cfg.position_embedding_type == "alibi":
            t.bias = alibi_bias(alibi_slopes(cfg.num_attention_heads).to(device), length)
        if self.bucket is not None:
            # HF MPNet buckets with 32 buckets and distance 128 whatever the config says (compute_position_bias's
            # defaults); the table may have more rows than are ever used.
            buckets = t5_buckets(positions[None, :] - positions[:, None], 32, 128)  # (length, length)
            t.bias = self.bucket(buckets).permute(2, 0, 1)  # (heads, length, length)
        for w in self.half_windows:
            if torch.compiler.is_exporting() or length - 1 > w:  # shorter ones fit the window (export: any length)
                t.windows[w] = window_bias(length, w, device)
        if self.embeddings is not None:
            t.rel, t.rel_index = self._deberta_rows(length, device)
        return t

    def _deberta_rows(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Only the relative-embedding rows that distances of up to ``length`` reach: at most 2 * length - 1 of the
        table's 2 * span (512 for DeBERTa-v3), so short batches project a few rows instead of all of them.

        Every DeBERTa score depends on i - j alone, so one row index per distance (not per (i, j) pair) is the
        whole table: (2 * length - 1,), distances ascending."""
        cfg = self.cfg
        span = deberta_span(cfg)
        rel = torch.arange(-(length - 1), length, device=device)  # i - j, ascending
        if cfg.position_buckets > 0 and deberta_max_relative(cfg) > 0:
            rel = log_buckets(rel, cfg.position_buckets, deberta_max_relative(cfg))
        index = torch.clamp(rel + span, 0, 2 * span - 1)  # c2p row of distance i - j, as transformers clamps
        # buckets grow with i - j; a graph being exported cannot size a tensor by its values: every row
        lo, hi = (0, 2 * span - 1) if torch.compiler.is_exporting() else (int(index[0]), int(index[-1]))
        rows = self.embeddings.weight[lo:hi + 1]
        if self.norm is not None:
            rows = self.norm(rows)  # row-wise, so normalizing a slice equals slicing the normalized table
        return rows, index - lo


def deberta_span(cfg: EncoderConfig) -> int:
    """Half the relative-embedding table: ``position_buckets``, else ``max_relative_positions``."""
    return cfg.position_buckets if cfg.position_buckets > 0 else deberta_max_relative(cfg)


def deberta_max_relative(cfg: EncoderConfig) -> int:
    return cfg.max_relative_positions if cfg.max_relative_positions >= 1 else cfg.max_position_embeddings


def layer_rope_theta(cfg: EncoderConfig, layer: int) -> float | None:
    if cfg.position_embedding_type != "rope":
        return None
    if cfg.layer_type(layer) == "sliding_attention" and cfg.local_rope_theta is not None:
        return cfg.local_rope_theta
    return cfg.rope_theta


def layer_half_window(cfg: EncoderConfig, layer: int) -> int | None:
    return cfg.local_attention // 2 if cfg.layer_type(layer) == "sliding_attention" else None


def disentangled_bias(pos_k: Tensor | None, pos_q: Tensor | None, index: Tensor, scale: float) -> ScoreBias:
    """DeBERTa's relative scores as a score bias: c2p[i, j] = q_i . P_k[r(i - j)], p2c[i, j] = k_j . P_q[r(i - j)].

    pos_k, pos_q: (heads, rows, head_dim), the relative embeddings through this layer's key / query projection
    (None when ``pos_att_type`` lacks c2p / p2c); index: (2 * length - 1,) their row for each distance i - j
    (ascending, ``Tables.rel_index``).

    Both terms depend on i - j alone, so each is one matmul against the rows laid out per distance (2L - 1 rows,
    scaled once here) followed by a strided *view* (the "relative shift" of Transformer-XL): row i of
    C = q E^T holds q_i . E[m] for every distance, and c2p[i, j] sits at C[i, j - i + L - 1], i.e. at offset
    i * (2L - 2) + j + L - 1 of the contiguous C. No (L, L) index is built or gathered per call.
    """
    length = (index.shape[0] + 1) // 2
    # Rows per distance, built once per layer and forward for the longest length; a length-L call takes the middle
    # 2L - 1 of them. c2p reads distances descending (m = j - i + L - 1), p2c ascending (m = i - j + L - 1).
    rows_k = pos_k.index_select(1, index.flip(0)).mul_(scale) if pos_k is not None else None
    rows_q = pos_q.index_select(1, index).mul_(scale) if pos_q is not None else None

    def shifted(x: Tensor, rows: Tensor) -> Tensor:
        """x (n, heads, L, head_dim) -> (n, heads, L, L) view: out[.., a, b] = x_a . rows[distance a - b or b - a]."""
        n, heads, L, _ = x.shape
        e = rows[:, length - L:length + L - 1].to(x.dtype)  # (heads, 2L - 1, head_dim)
        c = torch.matmul(x, e.transpose(-1, -2))  # (n, heads, L, 2L - 1), contiguous
        if torch.compiler.is_exporting():  # symbolic strides guard on L (ONNX export): the same entries, gathered
            pos = torch.arange(L, device=x.device)
            return torch.gather(c, -1, (pos[None, :] - pos[:, None] + L - 1).expand(n, heads, L, L))
        w = 2 * L - 1
        return c.as_strided((n, heads, L, L), (heads * L * w, L * w, w - 1, 1), c.storage_offset() + L - 1)

    def bias(q: Tensor, k: Tensor) -> Tensor:  # q, k (n, heads, L, head_dim) -> (n, heads, L, L)
        c2p = shifted(q, rows_k) if rows_k is not None else None  # [i, j] = q_i . P_k[r(i - j)]
        p2c = shifted(k, rows_q).transpose(-1, -2) if rows_q is not None else None  # [j, i] -> [i, j]
        if c2p is None or p2c is None:
            return c2p if p2c is None else p2c
        return c2p + p2c

    return bias


def static_bias(table: Tensor, heads: list[int] | None) -> ScoreBias:
    """A bias that does not depend on q, k: table (heads, >= L, >= L) or (>= L, >= L), sliced to each length;
    ``heads``: the original ids of the heads a pruned layer keeps (None: all)."""
    if heads is not None and table.dim() == 3:
        table = table[heads]

    def bias(q: Tensor, k: Tensor) -> Tensor:
        length = q.shape[-2]
        return table[..., :length, :length].to(q.dtype)

    return bias


def sum_biases(parts: list[ScoreBias]) -> ScoreBias | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]

    def bias(q: Tensor, k: Tensor) -> Tensor:
        out = parts[0](q, k)
        for p in parts[1:]:
            out = out + p(q, k)
        return out

    return bias
