"""The distillation losses, and what they read from a forward.

Losses, combined by weight (a zero weight skips its work; several layers or teachers are averaged, so a
weight means the same at any depth):
  alpha_kl      soft labels: T^2 KL(p_teacher || softmax(z_student / T)) with p_teacher = softmax(z_teacher / T)
                averaged over teachers by ``teacher_weights`` (Hinton et al. 2015); multi-label: binary KL of
                sigmoid(z / T) per label; regression: MSE to the teachers' mean prediction (no temperature)
  alpha_ce      hard labels: the head's own task loss
  alpha_hidden  MSE(W h_student, h_teacher) over mapped hidden states (embeddings and layers, TinyBERT), W a
                learned linear projection per pair (the identity at the start when the widths are equal)
  alpha_attn    KL(teacher || student) of the attention distributions, per head and query token (TinyBERT,
                MiniLM); last layers (``attn_layers: last``) or every mapped pair (``mapped``)
  alpha_value   KL(teacher || student) of the value relations softmax(V_h V_h^T / sqrt(d)) (MiniLM)

Attention on the packed layout. The losses need each layer's attention, which the model never materialises
outside its kernel. ``capture`` adds forward hooks (opt-in, removed on exit) that keep the fused QKV projection
``(total_tokens, 3 * heads * head_dim)`` of the wanted layers and the hidden states; each layer's own
``Layer.attention_scores`` then recomputes its logits run by run, exactly as it attends (its scale and positions:
RoPE of its base, ALiBi, MPNet's bucket bias, DeBERTa's disentangled c2p / p2c terms, ModernBERT's sliding window),
one ``(n_seqs, heads, L, L)`` block per run of equal-length sequences: no padding, no mask, and attention stays
inside each sequence. So every family is distilled with its own attention, and nothing here re-implements positions.
The models' own forwards are untouched, so logits and hidden states are the ordinary ones; the price is one extra
QK^T for the distilled layers. The recomputed distributions are those before attention dropout. When teacher and
student head counts differ, MiniLMv2's relation heads stand in: the concatenated q (k, v) of all heads is re-split
into ``relation_heads`` equal parts in both models, scaled by 1 / sqrt(d) of the parts (``relation_scores``; the
positions are then left out: they belong to the real heads). Head counts are per layer, so pruned layers work too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.errors import ConfigError
from bertkit.model.attention import Packing, split_runs
from bertkit.model.bert import BertModel, Layer
from bertkit.model.positions import Tables, apply_rope

Positions = tuple[tuple[Tensor, Tensor] | None, Tensor | None]  # (rope, alibi) for relation_scores


@dataclass
class Internals:
    hidden: dict[int, Tensor] = field(default_factory=dict)  # hidden-state index -> (total_tokens, hidden)
    qkv: dict[int, Tensor] = field(default_factory=dict)  # layer (0-based) -> (total_tokens, 3 * hidden)


@contextmanager
def capture(encoder: BertModel, hidden: Iterable[int] = (), qkv: Iterable[int] = ()) -> Iterator[Internals]:
    """Record, for forwards run inside the block, hidden states (index 0: the embeddings' output, i: the output
    of layer i - 1) and the fused QKV projections of 0-based layers; hooks are removed on exit."""
    found = Internals()
    handles = []

    def keep(store: dict[int, Tensor], key: int):
        def hook(_module: nn.Module, _inputs: Any, out: Tensor) -> None:
            # without autograd the next layer adds into its input in place (bert.py): keep a copy
            store[key] = out if torch.is_grad_enabled() else out.clone()
        return hook

    try:
        for i in sorted(set(hidden)):
            module = encoder.embeddings if i == 0 else encoder.layers[i - 1]
            handles.append(module.register_forward_hook(keep(found.hidden, i)))
        for i in sorted(set(qkv)):
            handles.append(encoder.layers[i].Wqkv.register_forward_hook(keep(found.qkv, i)))
        yield found
    finally:
        for h in handles:
            h.remove()


def normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Teacher weights summing to 1 (equal when None); a wrong count, a negative weight or all zeros fail."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(f"teacher_weights has {len(weights)} values for {n} teachers")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"teacher_weights {weights} must be >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def soft_targets(teacher_logits: Sequence[Tensor], weights: Sequence[float] | None, temperature: float,
                 problem_type: str = "single_label_classification") -> Tensor:
    """Teachers' logits, each (n, num_labels) -> their weighted mean softened prediction (n, num_labels):
    softmax(z / T) (single-label), sigmoid(z / T) (multi-label), or z itself (regression)."""
    w = normalize_weights(weights, len(teacher_logits))
    out = None
    for wi, z in zip(w, teacher_logits, strict=True):
        z = z.float()
        p = (torch.softmax(z / temperature, -1) if problem_type == "single_label_classification" else
             torch.sigmoid(z / temperature) if problem_type == "multi_label_classification" else z)
        out = wi * p if out is None else out + wi * p
    return out


def soft_label_loss(student_logits: Tensor, targets: Tensor, temperature: float,
                    problem_type: str = "single_label_classification") -> Tensor:
    """student_logits (n, num_labels), targets from ``soft_targets`` (n, num_labels) -> scalar.

    single-label: T^2 KL(targets || softmax(z / T)), summed over labels, mean over rows (the T^2 keeps the
    gradient's scale independent of T); multi-label: T^2 times the mean binary KL per (row, label);
    regression: MSE(z, targets).
    """
    z = student_logits.float()
    if z.shape[0] == 0:
        return z.sum() * 0.0
    if problem_type == "regression":
        return F.mse_loss(z, targets)
    t2 = temperature * temperature
    if problem_type == "multi_label_classification":
        entropy = -(torch.xlogy(targets, targets) + torch.xlogy(1 - targets, 1 - targets))
        return t2 * (F.binary_cross_entropy_with_logits(z / temperature, targets) - entropy.mean())
    return t2 * F.kl_div(F.log_softmax(z / temperature, -1), targets, reduction="batchmean")


def hidden_mse(student: Tensor, teacher: Tensor, projection: nn.Module) -> Tensor:
    """student (total_tokens, hidden_s), teacher (total_tokens, hidden_t), projection hidden_s -> hidden_t:
    MSE(projection(student), teacher), mean over tokens and dimensions."""
    return F.mse_loss(projection(student).float(), teacher.float())


def relation_scores(a: Tensor, b: Tensor, packing: Packing, heads: int,
                    positions: Positions | None = None) -> Iterator[Tensor]:
    """a, b (total_tokens, heads * d) -> per run of equal-length sequences, (n_seqs, heads, L, L) scores
    a_h b_h^T / sqrt(d), with RoPE rotating a and b and ALiBi added when ``positions`` has them.

    q, k of relation heads give MiniLMv2's attention relations; v, v the value relation. A layer's real attention
    logits, with its family's positions and scale, come from ``Layer.attention_scores``. Runs are split as
    ``unpadded_attention`` splits them, so one block stays under its score-size cap.
    """
    d = a.shape[-1] // heads
    rope, alibi = positions or (None, None)
    for start, n, length in split_runs(packing.runs, heads):
        end = start + n * length
        x = a[start:end].reshape(n, length, heads, d).transpose(1, 2)  # (n, heads, L, d)
        y = b[start:end].reshape(n, length, heads, d).transpose(1, 2)
        if rope is not None:
            x, y = apply_rope(x, y, rope[0][:length], rope[1][:length])
        scores = torch.matmul(x, y.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        if alibi is not None:
            scores = scores + alibi[:, :length, :length].to(scores.dtype)
        yield scores


def relation_kl(teacher: Iterable[Tensor], student: Iterable[Tensor]) -> Tensor:
    """Matching blocks of scores (..., L, L) -> KL(softmax(teacher) || softmax(student)) of each row (the last
    dim), averaged over all rows of all blocks (sequences x heads x query tokens). Keys the teacher gives no
    probability (outside a sliding window) add nothing, even where both logits are -inf."""
    total, rows = None, 0
    for t, s in zip(teacher, student, strict=True):
        t_log, s_log = F.log_softmax(t.float(), -1), F.log_softmax(s.float(), -1)
        p = t_log.exp()
        kl = torch.where(p > 0, p * (t_log - s_log), 0.0).sum()
        total = kl if total is None else total + kl
        rows += t.numel() // t.shape[-1]
    return total / rows


def attention_kl(teacher_qkv: Tensor, student_qkv: Tensor, packing: Packing, heads: int,
                 teacher_positions: Positions | None = None, student_positions: Positions | None = None) -> Tensor:
    """Fused projections (total_tokens, 3 * hidden_t) and (total_tokens, 3 * hidden_s) -> scalar KL of the
    attention distributions softmax(q_h k_h^T / sqrt(d)) per head, mean over (sequence, head, query token).

    For relation heads (q and k re-split into ``heads`` parts, positions left out) and plain BERT-style layers;
    ``layer_attention_kl`` compares two layers' real attention, any family."""
    tq, tk, _ = teacher_qkv.chunk(3, dim=-1)
    sq, sk, _ = student_qkv.chunk(3, dim=-1)
    return relation_kl(relation_scores(tq, tk, packing, heads, teacher_positions),
                       relation_scores(sq, sk, packing, heads, student_positions))


def value_relation_kl(teacher_qkv: Tensor, student_qkv: Tensor, packing: Packing, heads: int) -> Tensor:
    """As ``attention_kl`` for MiniLM's value relation softmax(V_h V_h^T / sqrt(d)) per (relation) head."""
    tv, sv = teacher_qkv.chunk(3, dim=-1)[2], student_qkv.chunk(3, dim=-1)[2]
    return relation_kl(relation_scores(tv, tv, packing, heads), relation_scores(sv, sv, packing, heads))


def pick_relation_heads(teacher_heads: int, student_heads: int, teacher_width: int, student_width: int,
                        relation_heads: int | None) -> int:
    """Heads the attention / value losses compare for one pair of layers (width: heads * head_dim, the q part of
    the layer's QKV): the real ones when the counts match (and none other is asked for), else ``relation_heads``
    or the student's head count, which must divide both widths."""
    if relation_heads is None and teacher_heads == student_heads:
        return teacher_heads
    r = relation_heads or student_heads
    if teacher_width % r or student_width % r:
        raise ConfigError(f"attention/value distillation: the teacher layer has {teacher_heads} heads (width "
                          f"{teacher_width}), the student layer {student_heads} (width {student_width}); "
                          f"relation_heads={r} must divide both widths")
    return r


def layer_attention_kl(teacher: Layer, teacher_qkv: Tensor, teacher_tables: Tables, student: Layer,
                       student_qkv: Tensor, student_tables: Tables, packing: Packing) -> Tensor:
    """KL(teacher || student) of two layers' real attention distributions (same head count), mean over (sequence,
    head, query token): each layer's logits from its own ``attention_scores`` (its family's scale and positions)
    on its captured QKV projection (total_tokens, 3 * heads * head_dim) and its model's ``position_tables``."""
    return relation_kl(teacher.attention_scores(teacher_qkv, packing, teacher_tables),
                       student.attention_scores(student_qkv, packing, student_tables))
