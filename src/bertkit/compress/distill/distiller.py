"""The trained module: the student plus the hidden-state projections, and the weighted loss of a batch.

The primary teacher (the first) provides the hidden states and attention and seeds the student; every teacher
contributes soft labels. Teachers stay outside the trained module: frozen, in eval mode, under no_grad.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.compress.distill.config import ATTN_LAYERS
from bertkit.compress.distill.losses import (
    attention_kl,
    capture,
    hidden_mse,
    layer_attention_kl,
    normalize_weights,
    pick_relation_heads,
    soft_label_loss,
    soft_targets,
    value_relation_kl,
)
from bertkit.compress.distill.students import Head, encoder_of, uniform_layer_map
from bertkit.data.features import IGNORE
from bertkit.errors import ConfigError
from bertkit.model.bert import BertModel
from bertkit.model.heads import TokenClassifier
from bertkit.train.distributed import all_sum


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
        """Mean of each part over the training batches since the last call: ``train_kl``, ``train_ce`` ...; under
        torchrun over every rank's batches (each rank calls it at the same eval), so all ranks log the same."""
        keys = sorted(self._sums)
        count, *sums = all_sum([float(self._count), *(float(self._sums[k]) for k in keys)],
                               next(self.parameters()).device)
        self._sums, self._count = {}, 0
        return {f"train_{k}": v / count for k, v in zip(keys, sums, strict=True)} if count else {}
