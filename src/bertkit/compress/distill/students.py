"""Students, built before any training (a bad one is an error naming the setting):

  student_from_teacher(teacher, layers)      the chosen teacher layers, plus embeddings, pooler and classifier
  student_from_config(teacher, overrides)    a narrower encoder (hidden size, heads, intermediate), fresh weights
  DistillConfig.student_model                an encoder directory, e.g. the output of ``distill_general``

Students from teacher layers work for every family: ModernBERT's ``layer_types`` follow the kept layers, DeBERTa's
per-layer position projections travel with their layers and the model-level relative tables (DeBERTa's relative
embeddings, MPNet's bucket bias) are copied whole. A pre-norm family without an attention norm in layer 0
(ModernBERT) whose student starts at a later teacher layer drops that layer's attention norm (logged): the student's
first layer has none, as the family defines it; training adapts it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from bertkit.compress.distill.config import DistillConfig
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import ConfigError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.heads import SequenceClassifier, TokenClassifier, build_head, strip_task_keys
from bertkit.task_model import TaskModel

log = logging.getLogger("bertkit")

Head = SequenceClassifier | TokenClassifier


def encoder_of(model: BertModel | Head) -> BertModel:
    """The encoder itself, or a task head's."""
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


def same_head(teacher: Head, encoder: BertModel) -> Head:
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
    head = same_head(teacher, student).to(device)
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
    return student if isinstance(teacher, BertModel) else same_head(teacher, student).to(device)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer (0-based) each student layer learns from: evenly spaced, the last on the last."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers map every id to the same token (a student reads one tokenization)."""
    return a.vocab_size == b.vocab_size and a.convert_ids_to_tokens(list(range(a.vocab_size))) == \
        b.convert_ids_to_tokens(list(range(b.vocab_size)))


def labels_of(cfg: EncoderConfig) -> list[str]:
    """A task model config's label names, in id order."""
    id2label = cfg.extra.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def build_task_student(cfg: DistillConfig, teacher: TaskModel, teacher_name: str) -> tuple[Head, list[int] | None]:
    """The student head from ``cfg`` and its default layer map (the copied layers, or None for uniform)."""
    if cfg.student_layers:
        return student_from_teacher(teacher.head, cfg.student_layers), list(cfg.student_layers)
    if cfg.student_config:
        return student_from_config(teacher.head, cfg.student_config), None
    info = inspect_model_dir(cfg.student_model)
    d = info.path
    encoder, heads, _ = load_encoder(info, who="a distillation student")
    if not same_vocabulary(Tokenizer.from_dir(info.weights_dir), teacher.tokenizer):
        raise ConfigError(f"student_model {d} and teacher {teacher_name} use different vocabularies")
    if len(encoder.layers) > len(teacher.head.encoder.layers):
        raise ConfigError(f"student_model {d} has {len(encoder.layers)} layers, more than teacher {teacher_name} "
                          f"({len(teacher.head.encoder.layers)})")
    labels = labels_of(encoder.config) if info.is_task_model else []
    strip_task_keys(encoder.config)
    head = build_head(encoder, teacher.task, max(len(teacher.labels), 1))
    if labels:  # a task model as the student: it must already speak the teacher's labels
        if labels != teacher.labels:
            raise ConfigError(f"student_model {d} has labels {labels}, teacher {teacher_name} has {teacher.labels}")
        head.load_head_state(heads, source=str(d))
    return head.to(teacher.device), None


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (what the logs and results.json report)."""
    return sum(p.numel() for p in model.parameters())
