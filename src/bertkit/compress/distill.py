"""Knowledge distillation: a smaller student learns from fine-tuned teachers, or from an encoder on raw text.

Students (built before any training; a bad one is an error naming the setting):
  student_from_teacher(teacher, layers)      the chosen teacher layers, plus embeddings, pooler and classifier
  student_from_config(teacher, overrides)    a narrower encoder (hidden size, heads, intermediate), fresh weights
  DistillConfig.student_model                an encoder directory, e.g. the output of ``distill_general``

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

Students from teacher layers work for every family: ModernBERT's ``layer_types`` follow the kept layers, DeBERTa's
per-layer position projections travel with their layers and the model-level relative tables (DeBERTa's relative
embeddings, MPNet's bucket bias) are copied whole. A pre-norm family without an attention norm in layer 0
(ModernBERT) whose student starts at a later teacher layer drops that layer's attention norm (logged): the student's
first layer has none, as the family defines it; training adapts it.

The primary teacher (the first) provides the hidden states and attention and seeds the student; every teacher
contributes soft labels. Teachers stay outside the trained module: frozen, in eval mode, under no_grad.

A task run writes a normal task model directory (``TaskModel.from_pretrained``, ``bertkit evaluate``,
``bertkit predict``) plus checkpoints, ``metrics.jsonl`` (eval records also carry ``train_<loss>``, the mean
of each loss since the last eval), ``distill_config.json`` and ``results.json`` (student and teachers on test).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.corpus import PackedSequences, build_token_cache, epoch_order
from bertkit.data.features import IGNORE
from bertkit.data.tasks import TaskData, check_known_labels
from bertkit.data.tokenizer import TOKENIZER_FILES, Tokenizer
from bertkit.encoder import pick_device
from bertkit.errors import BertkitError, ConfigError
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.attention import Packing, split_runs
from bertkit.model.bert import BertModel, Layer
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.heads import SequenceClassifier, TokenClassifier, strip_task_keys
from bertkit.model.positions import Tables, apply_rope
from bertkit.model.weights import save_weights
from bertkit.task_model import MAIN_METRIC, TaskModel, build_head
from bertkit.train.engine import CURVE_FILE, METRICS_FILE, TrainConfig, Trainer, TrainState, config_from_dict
from bertkit.train.finetune import (
    DataConfig,
    FinetuneConfig,
    data_fields,
    load_splits,
    prepare_output_dir,
    train_and_score,
)
from bertkit.train.pretrain import default_cache_dir
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

Head = SequenceClassifier | TokenClassifier
Positions = tuple[tuple[Tensor, Tensor] | None, Tensor | None]  # (rope, alibi) for relation_scores
ATTN_LAYERS = ("last", "mapped")
LOSSES = ("kl", "ce", "hidden", "attn", "value")
CONFIG_FILE = "distill_config.json"
GENERAL_CONFIG_FILE = "distill_general_config.json"
RESULTS_FILE = "results.json"
OUTPUT_FILES = ("config.json", "model.safetensors", "bertkit_task.json", METRICS_FILE, CURVE_FILE, CONFIG_FILE,
                RESULTS_FILE)
GENERAL_OUTPUT_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES, METRICS_FILE, CURVE_FILE,
                        GENERAL_CONFIG_FILE, RESULTS_FILE)


# ----------------------------------------------------------------------------------------------------------------
# students


def encoder_of(model: BertModel | Head) -> BertModel:
    return model if isinstance(model, BertModel) else model.encoder


def check_student_layers(layers: Sequence[int], teacher_layers: int) -> None:
    """Fail unless ``layers`` are increasing 0-based layer ids of a teacher with ``teacher_layers`` layers."""
    layers = list(layers)
    if not layers:
        raise ConfigError("student_layers is empty: name the teacher layers the student keeps, e.g. 0,2,4")
    if len(layers) > teacher_layers:
        raise ConfigError(f"student_layers {layers} asks for {len(layers)} layers; the teacher has only "
                          f"{teacher_layers}")
    bad = [i for i in layers if not 0 <= i < teacher_layers]
    if bad:
        raise ConfigError(f"student_layers {layers}: layer {bad[0]} is out of range; the teacher has "
                          f"{teacher_layers} layers (0..{teacher_layers - 1})")
    if layers != sorted(set(layers)):
        raise ConfigError(f"student_layers {layers} must be increasing, each layer once")


def _same_head(teacher: Head, encoder: BertModel) -> Head:
    """A head of the teacher's kind, labels and problem type on ``encoder`` (its classifier freshly initialised)."""
    if isinstance(teacher, TokenClassifier):
        return TokenClassifier(encoder, teacher.num_labels, teacher.problem_type)
    return SequenceClassifier(encoder, teacher.num_labels, teacher.problem_type)


def student_from_teacher(teacher: BertModel | Head, layers: Sequence[int]) -> BertModel | Head:
    """A shallower copy: student layer j is teacher layer ``layers[j]`` (0-based); embeddings, model-level position
    tables, final norm, pooler and (for a head) the whole task head are copied too. Returns the teacher's type.

    Per-layer settings follow the kept layers (pruned sizes, ModernBERT's ``layer_types``). Where the family has no
    attention norm in layer 0 (``first_layer_attn_norm=False``) and ``layers[0] > 0``, the kept layer's attention
    norm is dropped (logged): the student is trained after this, and its first layer is then as the family builds it.
    """
    enc = encoder_of(teacher)
    check_student_layers(layers, len(enc.layers))
    src = enc.config
    changes: dict[str, Any] = {"num_hidden_layers": len(layers)}
    # per-layer sizes left by structured pruning, and per-layer attention types, follow the kept layers
    if src.pruned_heads:
        changes["pruned_heads"] = {j: src.pruned_heads[i] for j, i in enumerate(layers) if i in src.pruned_heads}
    if src.intermediate_sizes is not None:
        changes["intermediate_sizes"] = [src.intermediate_sizes[i] for i in layers]
    if src.layer_types is not None:
        changes["layer_types"] = [src.layer_types[i] for i in layers]
    cfg = dataclasses.replace(src, **changes, extra=dict(src.extra))
    student = BertModel(cfg, add_pooler=enc.pooler is not None, path=enc.path)
    new_index = {old: new for new, old in enumerate(layers)}
    wanted = student.state_dict()
    state, dropped = {}, []
    for key, value in enc.state_dict().items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            if int(i) not in new_index:
                continue
            key = f"layers.{new_index[int(i)]}.{rest}"
            if key not in wanted and key.startswith("layers.0.attn_norm."):  # the family's layer 0 has none
                dropped.append(key)
                continue
        state[key] = value
    if dropped:
        log.info("student layer 0 (teacher layer %d) has no attention norm, as the first layer of a %s model: "
                 "the teacher layer's norm is left out", layers[0], cfg.model_type)
    student.load_state_dict(state, strict=True)  # every student tensor comes from the teacher
    device = next(enc.parameters()).device
    student.to(device)
    if isinstance(teacher, BertModel):
        return student
    head = _same_head(teacher, student).to(device)
    own = {k: v for k, v in teacher.state_dict().items() if not k.startswith("encoder.")}
    head.load_state_dict({**own, **{f"encoder.{k}": v for k, v in student.state_dict().items()}}, strict=True)
    return head


def student_from_config(teacher: BertModel | Head, overrides: dict[str, Any]) -> BertModel | Head:
    """The teacher's config with ``overrides`` (e.g. hidden_size, num_attention_heads, intermediate_size,
    num_hidden_layers), freshly initialised (seed with ``torch.manual_seed``); a head gets its own classifier."""
    enc = encoder_of(teacher)
    known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"extra"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown student_config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if overrides.get("vocab_size", enc.config.vocab_size) != enc.config.vocab_size:
        raise ConfigError(f"student_config vocab_size={overrides['vocab_size']}: the student shares the teacher's "
                          f"tokenizer ({enc.config.vocab_size} tokens)")
    layers = overrides.get("num_hidden_layers", enc.config.num_hidden_layers)
    if isinstance(layers, int) and layers > len(enc.layers):
        raise ConfigError(f"student_config num_hidden_layers={layers}: the teacher has only {len(enc.layers)}")
    # a fresh student has uniform layers unless asked otherwise: a pruned teacher's per-layer sizes do not carry
    uniform = {k: v for k, v in (("pruned_heads", {}), ("intermediate_sizes", None)) if hasattr(enc.config, k)}
    if enc.config.layer_types is not None and isinstance(layers, int) and "layer_types" not in overrides:
        uniform["layer_types"] = enc.config.layer_types[:layers]  # ModernBERT's pattern from its first layer on
    try:
        cfg = dataclasses.replace(enc.config, **{**uniform, **overrides}, extra=dict(enc.config.extra))
    except ConfigError as e:
        raise ConfigError(f"student_config: {e}") from None
    device = next(enc.parameters()).device
    student = BertModel(cfg, add_pooler=enc.pooler is not None, path=enc.path).to(device)
    return student if isinstance(teacher, BertModel) else _same_head(teacher, student).to(device)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer (0-based) each student layer learns from: evenly spaced, the last on the last."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


# ----------------------------------------------------------------------------------------------------------------
# what the losses read from a forward


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


# ----------------------------------------------------------------------------------------------------------------
# losses


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


# ----------------------------------------------------------------------------------------------------------------
# the trained module


class Distiller(nn.Module):
    """The student plus the hidden-state projections: what the engine trains, checkpoints and resumes.

    Teachers sit in a plain list, outside the module tree, so the optimizer, ``state_dict`` and ``.train()``
    never reach them. ``forward(batch)`` is the weighted loss; ``losses(batch)`` returns every part.
    """

    def __init__(self, student: BertModel | Head, teachers: Sequence[BertModel | Head], *,
                 teacher_weights: Sequence[float] | None = None, temperature: float = 2.0, alpha_kl: float = 0.0,
                 alpha_ce: float = 0.0, alpha_hidden: float = 0.0, alpha_attn: float = 0.0, alpha_value: float = 0.0,
                 layer_map: Sequence[int] | None = None, attn_layers: str = "last", relation_heads: int | None = None,
                 label_orders: Sequence[Sequence[int] | None] | None = None) -> None:
        super().__init__()
        if not teachers:
            raise ConfigError("distillation needs at least one teacher")
        self.student = student
        self.teachers = list(teachers)  # a plain list: not submodules
        for t in self.teachers:
            t.eval().requires_grad_(False)
        self.task = not isinstance(student, BertModel)
        if not self.task and (alpha_kl or alpha_ce):
            raise ConfigError("alpha_kl / alpha_ce need task models (logits); general distillation uses "
                              "alpha_hidden, alpha_attn and alpha_value")
        self.weights = normalize_weights(teacher_weights, len(self.teachers))
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.alpha = {"kl": alpha_kl, "ce": alpha_ce, "hidden": alpha_hidden, "attn": alpha_attn,
                      "value": alpha_value}
        if any(a < 0 for a in self.alpha.values()):
            raise ConfigError(f"loss weights must be >= 0, got {self.alpha}")
        if not (alpha_kl or alpha_hidden or alpha_attn or alpha_value):
            raise ConfigError("nothing to distill: set alpha_kl, alpha_hidden, alpha_attn or alpha_value > 0")
        # where a teacher orders its labels differently from the first, its logits are permuted to that order
        self.label_orders = list(label_orders) if label_orders is not None else [None] * len(self.teachers)

        s_cfg, t_cfg = encoder_of(student).config, encoder_of(self.teachers[0]).config
        m, n = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
        self.layer_map = list(layer_map) if layer_map is not None else uniform_layer_map(m, n)
        if len(self.layer_map) != m or any(not 0 <= i < n for i in self.layer_map):
            raise ConfigError(f"layer_map {self.layer_map} must name one teacher layer (0..{n - 1}) for each of the "
                              f"student's {m} layers")
        # (student, teacher) hidden-state indices: embeddings, then each layer's output
        self.hidden_pairs = [(0, 0)] + [(j + 1, i + 1) for j, i in enumerate(self.layer_map)] if alpha_hidden else []
        self.projections = nn.ModuleList()
        for _ in self.hidden_pairs:
            proj = nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size)
            if s_cfg.hidden_size == t_cfg.hidden_size:  # start as a plain MSE between equal widths
                nn.init.eye_(proj.weight)
                nn.init.zeros_(proj.bias)
            self.projections.append(proj.to(next(student.parameters()).device))
        if attn_layers not in ATTN_LAYERS:
            raise ConfigError(f"attn_layers is {attn_layers!r}; choose one of {', '.join(ATTN_LAYERS)}")
        self.attn_pairs: list[tuple[int, int]] = []  # (student, teacher) 0-based layers
        if alpha_attn or alpha_value:
            self.attn_pairs = [(m - 1, n - 1)] if attn_layers == "last" else list(enumerate(self.layer_map))
        # per pair: (heads compared, whether they are the layers' real heads, with their positions)
        self.heads: list[tuple[int, bool]] = []
        for s, t in self.attn_pairs:
            s_layer, t_layer = encoder_of(student).layers[s], encoder_of(self.teachers[0]).layers[t]
            r = pick_relation_heads(t_layer.num_heads, s_layer.num_heads, t_layer.Wqkv.out_features // 3,
                                    s_layer.Wqkv.out_features // 3, relation_heads)
            self.heads.append((r, r == t_layer.num_heads == s_layer.num_heads))
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    def _run(self, model: BertModel | Head, b: Any) -> Tensor:
        types = getattr(b, "token_type_ids", None)
        if isinstance(model, BertModel):
            return model.forward_packed(b.input_ids, b.packing, types)
        return model(b.input_ids, b.packing, types)

    def losses(self, b: Any) -> dict[str, Tensor]:
        """Every weighted part of the loss of one batch, and their weighted sum ``loss``."""
        a = self.alpha
        s_hidden = [s for s, _ in self.hidden_pairs]
        t_hidden = [t for _, t in self.hidden_pairs]
        s_qkv = [s for s, _ in self.attn_pairs]
        t_qkv = [t for _, t in self.attn_pairs]
        with capture(encoder_of(self.student), s_hidden, s_qkv) as s_in:
            logits = self._run(self.student, b)
        with torch.no_grad():
            with capture(encoder_of(self.teachers[0]), t_hidden, t_qkv) as t_in:
                t_logits = [self._run(self.teachers[0], b)]
            if a["kl"]:
                t_logits += [self._run(t, b) for t in self.teachers[1:]]
        parts: dict[str, Tensor] = {}
        if a["kl"] or a["ce"]:
            problem = self.student.problem_type
            rows = None
            if isinstance(self.student, TokenClassifier) and b.labels is not None:
                rows = b.labels != IGNORE  # token tasks: the tokens that carry a label
            if a["ce"]:
                parts["ce"] = (self.student.loss(logits, b.labels) if b.labels is not None and b.num_units
                               else logits.sum() * 0.0)
            if a["kl"]:
                ts = [z if order is None else z[..., order] for z, order in zip(t_logits, self.label_orders,
                                                                                 strict=True)]
                s = logits if rows is None else logits[rows]
                ts = ts if rows is None else [z[rows] for z in ts]
                parts["kl"] = soft_label_loss(s, soft_targets(ts, self.weights, self.temperature, problem),
                                              self.temperature, problem)
        if a["hidden"]:
            parts["hidden"] = torch.stack([hidden_mse(s_in.hidden[s], t_in.hidden[t], proj) for (s, t), proj
                                           in zip(self.hidden_pairs, self.projections, strict=True)]).mean()
        if a["attn"] or a["value"]:
            s_enc, t_enc = encoder_of(self.student), encoder_of(self.teachers[0])
            longest = max(b.packing.lengths)
            s_tables = s_enc.position_tables(longest, b.input_ids.device)  # each model's own, as in its forward
            with torch.no_grad():
                t_tables = t_enc.position_tables(longest, b.input_ids.device)
            attn, value = [], []
            for (s, t), (r, real) in zip(self.attn_pairs, self.heads, strict=True):
                if a["attn"] and real:
                    attn.append(layer_attention_kl(t_enc.layers[t], t_in.qkv[t], t_tables, s_enc.layers[s],
                                                   s_in.qkv[s], s_tables, b.packing))
                elif a["attn"]:
                    attn.append(attention_kl(t_in.qkv[t], s_in.qkv[s], b.packing, r))
                if a["value"]:
                    value.append(value_relation_kl(t_in.qkv[t], s_in.qkv[s], b.packing, r))
            if attn:
                parts["attn"] = torch.stack(attn).mean()
            if value:
                parts["value"] = torch.stack(value).mean()
        parts["loss"] = sum(a[k] * v for k, v in parts.items())
        return parts

    def forward(self, b: Any) -> Tensor:
        parts = self.losses(b)
        if self.training:
            for k, v in parts.items():
                if k != "loss":
                    self._sums[k] = self._sums.get(k, 0.0) + v.detach().float()
            self._count += 1
        return parts["loss"]

    def pop_train_losses(self) -> dict[str, float]:
        """Mean of each part over the training batches since the last call: ``train_kl``, ``train_ce`` ..."""
        out = {f"train_{k}": float(v) / self._count for k, v in self._sums.items()} if self._count else {}
        self._sums, self._count = {}, 0
        return out


# ----------------------------------------------------------------------------------------------------------------
# configs


def _check_student_source(cfg: Any) -> None:
    names = [n for n in ("student_layers", "student_config", "student_model") if hasattr(cfg, n)]
    given = [n for n in names if getattr(cfg, n)]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {', '.join(names)}" + (f" (got {', '.join(given)})" if given else ""))


def _check_losses(cfg: Any) -> None:
    if getattr(cfg, "temperature", 1.0) <= 0:
        raise ConfigError(f"temperature must be > 0, got {cfg.temperature}")
    alphas = {k: getattr(cfg, f"alpha_{k}") for k in LOSSES if hasattr(cfg, f"alpha_{k}")}
    bad = [f"alpha_{k}={v}" for k, v in alphas.items() if v < 0]
    if bad:
        raise ConfigError(f"loss weights must be >= 0: {', '.join(bad)}")
    if not any(v for k, v in alphas.items() if k != "ce"):
        raise ConfigError("nothing to distill: set alpha_kl, alpha_hidden, alpha_attn or alpha_value > 0")
    if cfg.attn_layers not in ATTN_LAYERS:
        raise ConfigError(f"attn_layers is {cfg.attn_layers!r}; choose one of {', '.join(ATTN_LAYERS)}")
    if cfg.relation_heads is not None and cfg.relation_heads < 1:
        raise ConfigError(f"relation_heads must be >= 1, got {cfg.relation_heads}")


@dataclass
class DistillConfig(DataConfig):  # data: as for fine-tuning (the task is the teachers')
    teachers: list[str] = field(default_factory=list)  # fine-tuned task model directories, same labels
    teacher_weights: list[float] | None = None  # soft-label weight of each teacher (normalized); None: equal
    # the student, exactly one of:
    student_layers: list[int] | None = None  # keep these layers (0-based) of the first teacher
    student_config: dict[str, Any] = field(default_factory=dict)  # the first teacher's config with these changes
    student_model: str | None = None  # an encoder (name or directory), e.g. a distill_general output
    # losses
    temperature: float = 2.0
    alpha_kl: float = 0.5
    alpha_ce: float = 0.5
    alpha_hidden: float = 0.0
    alpha_attn: float = 0.0
    alpha_value: float = 0.0
    layer_map: list[int] | None = None  # teacher layer (0-based) per student layer; None: student_layers or uniform
    attn_layers: str = "last"  # last | mapped: which layer pairs the attention and value losses compare
    relation_heads: int | None = None  # None: the real heads if the counts match, else the student's count
    training: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """From a plain mapping (a YAML recipe or kwargs); training keys may be flat or under ``training``."""
        cfg = config_from_dict(cls, d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.teachers:
            raise ConfigError("no teacher: give --teacher DIR (a fine-tuned task model directory)")
        normalize_weights(self.teacher_weights, len(self.teachers))
        _check_student_source(self)
        _check_losses(self)
        self.training.validate()


@dataclass
class DistillResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None
    test: dict[str, float] | None
    model: TaskModel
    teachers_test: list[dict[str, float] | None]


def _same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    return a.vocab_size == b.vocab_size and a.convert_ids_to_tokens(list(range(a.vocab_size))) == \
        b.convert_ids_to_tokens(list(range(b.vocab_size)))


def _labels_of(cfg: EncoderConfig) -> list[str]:
    id2label = cfg.extra.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def check_teachers(teachers: Sequence[TaskModel], names: Sequence[str]) -> list[list[int] | None]:
    """Teachers must do one task with one label set and one vocabulary. Returns, per teacher, the order that
    puts its logits in the first teacher's label order (None where it already is)."""
    first = teachers[0]
    orders: list[list[int] | None] = [None]
    for t, name in zip(teachers[1:], names[1:], strict=True):
        if t.task != first.task:
            raise ConfigError(f"teacher {name} does {t.task}, teacher {names[0]} does {first.task}")
        if set(t.labels) != set(first.labels):
            raise ConfigError(f"teacher {name} has labels {t.labels}, teacher {names[0]} has {first.labels}: "
                              "soft labels of several teachers must cover the same labels")
        if not _same_vocabulary(t.tokenizer, first.tokenizer):
            raise ConfigError(f"teacher {name} and teacher {names[0]} use different vocabularies; a student reads "
                              "one tokenization")
        orders.append(None if t.labels == first.labels else [t.label2id[x] for x in first.labels])
    return orders


def check_data_labels(data: TaskData, labels: Sequence[str], teacher: str) -> None:
    """The data's label set must be the teacher's (naming both lists)."""
    if data.task == "regression":
        return
    names = data.label_names()
    if set(names) != set(labels):
        raise ConfigError(f"{data.source}: the data's labels {names} differ from those of teacher {teacher} "
                          f"{list(labels)}")


def build_task_student(cfg: DistillConfig, teacher: TaskModel, teacher_name: str) -> tuple[Head, list[int] | None]:
    """The student head from ``cfg`` and its default layer map (the copied layers, or None for uniform)."""
    if cfg.student_layers:
        return student_from_teacher(teacher.head, cfg.student_layers), list(cfg.student_layers)
    if cfg.student_config:
        return student_from_config(teacher.head, cfg.student_config), None
    info = inspect_model_dir(cfg.student_model)
    d = info.path
    encoder, heads, _ = load_encoder(info, who="a distillation student")
    if not _same_vocabulary(Tokenizer.from_dir(info.weights_dir), teacher.tokenizer):
        raise ConfigError(f"student_model {d} and teacher {teacher_name} use different vocabularies")
    if len(encoder.layers) > len(teacher.head.encoder.layers):
        raise ConfigError(f"student_model {d} has {len(encoder.layers)} layers, more than teacher {teacher_name} "
                          f"({len(teacher.head.encoder.layers)})")
    labels = _labels_of(encoder.config) if info.is_task_model else []
    strip_task_keys(encoder.config)
    head = build_head(encoder, teacher.task, max(len(teacher.labels), 1))
    if labels:  # a task model as the student: it must already speak the teacher's labels
        if labels != teacher.labels:
            raise ConfigError(f"student_model {d} has labels {labels}, teacher {teacher_name} has {teacher.labels}")
        head.load_head_state(heads, source=str(d))
    return head.to(teacher.device), None


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def distill(output_dir: str | os.PathLike[str], config: DistillConfig | None = None, *, resume: bool = False,
            overwrite: bool = False, callbacks: tuple = (), **settings: Any) -> DistillResult:
    """Task-specific distillation; see ``DistillConfig`` and ``TrainConfig`` for ``settings``.

    >>> distill("runs/bbc-small", teachers=["runs/bbc"], dataset="bbc-news", student_layers=[0, 2, 4], epochs=3)
    """
    if config is not None and settings:
        raise ValueError("pass either config= or keyword settings, not both")
    cfg = config or DistillConfig.from_dict(settings)
    cfg.validate()
    out = Path(output_dir)
    device = pick_device(cfg.training.device)
    if device.type == "cpu":
        tune_allocator()
    # Everything that can be wrong is checked before the output directory is touched or a step is taken.
    teachers = [TaskModel.from_pretrained(d, device=device) for d in cfg.teachers]
    orders = check_teachers(teachers, cfg.teachers)
    primary = teachers[0]
    tcfg = dataclasses.replace(cfg.training, metric=cfg.training.metric or MAIN_METRIC[primary.task][0])
    fcfg = FinetuneConfig(task=primary.task, **data_fields(cfg), max_length=cfg.max_length, training=tcfg)
    splits = load_splits(fcfg)
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    if len(train) == 0:
        raise BertkitError(f"{train.source}: the training set is empty")
    check_data_labels(train, primary.labels, cfg.teachers[0])
    for other in (dev, test):
        if other is not None and len(other):
            check_known_labels(train, other)
    torch.manual_seed(tcfg.seed)  # fresh student weights, classifier and projections
    student, copied = build_task_student(cfg, primary, cfg.teachers[0])
    distiller = Distiller(student, [t.head for t in teachers], teacher_weights=cfg.teacher_weights,
                          temperature=cfg.temperature, alpha_kl=cfg.alpha_kl, alpha_ce=cfg.alpha_ce,
                          alpha_hidden=cfg.alpha_hidden, alpha_attn=cfg.alpha_attn, alpha_value=cfg.alpha_value,
                          layer_map=cfg.layer_map if cfg.layer_map is not None else copied,
                          attn_layers=cfg.attn_layers, relation_heads=cfg.relation_heads, label_orders=orders)
    limit = min(encoder_of(m).config.max_tokens for m in (student, *[t.head for t in teachers]))
    tm = TaskModel(student, primary.tokenizer, primary.task, primary.labels, min(cfg.max_length, limit), out)
    train_feats = tm.featurize(train)
    dev_feats = tm.featurize(dev) if dev is not None and len(dev) else None
    prepare_output_dir(out, resume, overwrite, OUTPUT_FILES)
    atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
    tm.tokenizer.save(out)

    fingerprint = {"teachers": [str(Path(d).resolve()) for d in cfg.teachers], "weights": distiller.weights,
                   "labels": primary.labels, "train_examples": len(train), "max_length": tm.max_length,
                   "student": student.encoder.config.to_dict(), "layer_map": distiller.layer_map,
                   "losses": {k: v for k, v in asdict(cfg).items() if k.startswith("alpha_") or k in
                              ("temperature", "attn_layers", "relation_heads")}}
    log.info("distilling %s into a %d-layer student (%.1fM vs %.1fM parameters) on %s: %d train / %d dev examples",
             ", ".join(cfg.teachers), len(student.encoder.layers), _count(student) / 1e6,
             _count(primary.head) / 1e6, cfg.dataset or cfg.train_file, len(train),
             len(dev) if dev is not None else 0)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        return {**tm.evaluate(dev_feats, gold=dev), **distiller.pop_train_losses()}

    state, best, dev_metrics, test_metrics, summary = train_and_score(
        tm, distiller, tcfg, train_feats, lambda m, b: m(b), out, fingerprint=fingerprint, callbacks=callbacks,
        resume=resume, device=device, dev=dev, dev_feats=dev_feats, test=test, evaluate=evaluate)
    teachers_test = [t.evaluate(test) if test is not None and len(test) else None for t in teachers]
    results = {"task": primary.task, "dataset": cfg.dataset or cfg.train_file, **summary,
               "student_parameters": _count(best.head), "student_layers": len(best.head.encoder.layers),
               "dev": dev_metrics, "test": test_metrics,
               "teachers": [{"model": d, "parameters": _count(t.head), "test": m}
                            for d, t, m in zip(cfg.teachers, teachers, teachers_test, strict=True)]}
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return DistillResult(out, state, dev_metrics, test_metrics, best, teachers_test)


# ----------------------------------------------------------------------------------------------------------------
# general distillation: raw text, no labels


@dataclass
class GeneralDistillConfig:
    teacher: str = DEFAULT_MODEL  # an encoder: built-in name or directory
    student_layers: list[int] | None = None  # exactly one of these two
    student_config: dict[str, Any] = field(default_factory=dict)
    corpus: list[str] = field(default_factory=lambda: ["python-docs"])  # as pretraining: files, folders, built-ins
    cache_dir: str | None = None  # token cache; None: the one pretraining uses for this corpus and tokenizer
    max_length: int = 128
    eval_sequences: int = 64  # held-out rows: the eval loss picks the best student
    alpha_hidden: float = 0.0
    alpha_attn: float = 1.0  # MiniLM: last-layer attention and value relations
    alpha_value: float = 1.0
    layer_map: list[int] | None = None
    attn_layers: str = "last"
    relation_heads: int | None = None
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, lr=3e-4, warmup_ratio=0.06))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneralDistillConfig:
        cfg = config_from_dict(cls, d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check_student_source(self)
        _check_losses(self)
        if not self.corpus:
            raise ConfigError("setting corpus is empty: name at least one file, folder or built-in corpus")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        self.training.validate()


@dataclass
class TextBatch:
    """Fixed-length rows of raw text, packed: ids (total_tokens,)."""

    input_ids: Tensor
    packing: Packing
    num_tokens: int
    num_units: int  # tokens: the attention losses average over query tokens

    def to(self, device: torch.device) -> TextBatch:
        if self.input_ids.device == device:
            return self
        return TextBatch(self.input_ids.to(device), dataclasses.replace(
            self.packing, cu_seqlens=self.packing.cu_seqlens.to(device)), self.num_tokens, self.num_units)


def text_batch(seqs: PackedSequences, rows: np.ndarray) -> TextBatch:
    ids = torch.from_numpy(seqs.take(rows)).flatten()
    return TextBatch(ids, Packing.from_lengths([seqs.max_length] * len(rows)), ids.numel(), ids.numel())


@dataclass
class GeneralDistillResult:
    output_dir: Path
    state: TrainState
    eval: dict[str, float] | None


def distill_general(output_dir: str | os.PathLike[str], config: GeneralDistillConfig | None = None, *,
                    resume: bool = False, overwrite: bool = False, **settings: Any) -> GeneralDistillResult:
    """Task-agnostic distillation on raw text (hidden, attention and value-relation losses); writes a plain
    encoder directory (``bertkit.load``, ``finetune --model``, ``DistillConfig.student_model``).

    >>> distill_general("runs/minilm-3l", teacher="all-MiniLM-L6-v2", student_layers=[1, 3, 5], corpus=["bbc-news"])
    """
    if config is not None and settings:
        raise ValueError("pass either config= or keyword settings, not both")
    cfg = config or GeneralDistillConfig.from_dict(settings)
    cfg.validate()
    tcfg = cfg.training
    out = Path(output_dir)
    device = pick_device(tcfg.device)
    if device.type == "cpu":
        tune_allocator()
    info = inspect_model_dir(cfg.teacher)
    teacher_dir = info.path
    teacher, _, _ = load_encoder(info, who="a distillation teacher")
    strip_task_keys(teacher.config)
    teacher.to(device)
    tok = Tokenizer.from_dir(info.weights_dir)
    if cfg.max_length > teacher.config.max_tokens:
        raise ConfigError(f"max_length {cfg.max_length} exceeds the teacher's limit of {teacher.config.max_tokens} "
                          f"tokens (max_position_embeddings {teacher.config.max_position_embeddings})")
    torch.manual_seed(tcfg.seed)
    if cfg.student_layers:
        student = student_from_teacher(teacher, cfg.student_layers)
        copied = list(cfg.student_layers)
    else:
        student, copied = student_from_config(teacher, cfg.student_config), None
    distiller = Distiller(student, [teacher], alpha_hidden=cfg.alpha_hidden, alpha_attn=cfg.alpha_attn,
                          alpha_value=cfg.alpha_value, layer_map=cfg.layer_map if cfg.layer_map is not None else copied,
                          attn_layers=cfg.attn_layers, relation_heads=cfg.relation_heads)
    cache = build_token_cache(cfg.corpus, tok, Path(cfg.cache_dir) if cfg.cache_dir else
                              default_cache_dir(cfg.corpus, tok))
    seqs = PackedSequences(cache, cfg.max_length, tok.cls_id, tok.sep_id)
    train_rows, eval_rows = seqs.split(eval_sequences=cfg.eval_sequences, seed=tcfg.seed)
    prepare_output_dir(out, resume, overwrite, GENERAL_OUTPUT_FILES)
    atomic_write_text(out / GENERAL_CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
    tok.save(out)
    eval_batches = [text_batch(seqs, eval_rows[i:i + tcfg.batch_size])
                    for i in range(0, len(eval_rows), tcfg.batch_size)]

    def batches(epoch: int) -> list[TextBatch]:
        order = train_rows[epoch_order(len(train_rows), tcfg.seed, epoch)]
        return [text_batch(seqs, order[i:i + tcfg.batch_size]) for i in range(0, len(order), tcfg.batch_size)]

    def evaluate(_m: nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        for b in eval_batches:
            for k, v in distiller.losses(b.to(device)).items():
                sums[k] = sums.get(k, 0.0) + float(v) * b.num_tokens
        n = sum(b.num_tokens for b in eval_batches)
        return {**{k: v / n for k, v in sums.items()}, **distiller.pop_train_losses()}

    def save(_m: nn.Module | None = None, _metrics: dict | None = None) -> None:
        student.config.save(out)
        save_weights(student, out)

    log.info("general distillation of %s into a %d-layer student: %d train / %d held-out rows of %d tokens",
             teacher_dir.name, len(student.layers), len(train_rows), len(eval_rows), cfg.max_length)
    trainer = Trainer(distiller, tcfg, batches=batches, loss_fn=lambda m, b: m(b), output_dir=out,
                      evaluate=evaluate if eval_batches else None, on_best=save,
                      fingerprint={"teacher": str(teacher_dir.resolve()), "corpus": cfg.corpus,
                                   "student": student.config.to_dict(), "layer_map": distiller.layer_map,
                                   "max_length": cfg.max_length, "eval_sequences": cfg.eval_sequences})
    state = trainer.fit(resume=resume)
    if not eval_batches:
        save()
    best = state.history and min(state.history, key=lambda r: r["loss"])
    results = {"teacher": str(teacher_dir), "corpus": cfg.corpus, "stopped": state.stopped, "steps": state.step,
               "best_step": state.best_step, "train_seconds": round(state.elapsed, 1),
               "student_parameters": _count(student), "teacher_parameters": _count(teacher),
               "eval": best or None}
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return GeneralDistillResult(out, state, best or None)

