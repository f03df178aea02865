"""Merging encoders fine-tuned from one base: task arithmetic and DARE, and one encoder with many heads.

A *task vector* is what fine-tuning changed (Ilharco et al. 2023, "Editing Models with Task Arithmetic"):
``delta_i = theta_i - theta_base`` over every encoder tensor (embeddings, layers, LayerNorms, pooler).
Merging adds them back::

    theta = theta_base + scaling * sum_i w_i * delta_i          (weights w_i default to 1/n: the mean)

DARE (Yu et al. 2023, "Language Models are Super Mario") first drops each entry of each delta with
probability p and rescales the survivors by 1 / (1 - p), so every entry keeps its expected value
(E[m / (1 - p)] = 1 for m ~ Bernoulli(1 - p)) while most of the entries that interfere across tasks go.
Fine-tuned deltas are small and redundant, so p = 0.9 typically costs each task little.

What is checked: every model has the base's encoder tensors with the base's shapes (a mismatch names the
tensor), and the same non-shape architecture (activation, norms, positions). What cannot be checked: that
the models were really fine-tuned *from this base* -- weights carry no lineage, and merging models from
different pre-trainings gives a well-shaped but meaningless encoder. Task heads are not merged: each
task keeps its own classifier on the shared encoder (``MultiHeadModel``).

Task vectors are float64: ``base + delta`` then reproduces the fine-tuned float32 weights bit for bit
(the float32 difference is exact in float64 unless the two values lie some 2^29 apart in magnitude).
``merge`` works one tensor at a time, so only one tensor's deltas are float64 at once.

``MultiHeadModel`` directory::

    config.json, model.safetensors, tokenizer files   the merged encoder, its family's HF base-model layout
    heads/<task>.safetensors                           the task head's own tensors under the family's HF names
                                                       (BERT: classifier.weight / .bias; RoBERTa: classifier.dense.*
                                                       and classifier.out_proj.*; ModernBERT: head.* + classifier.*)
    multihead.json                                     {"format": "bertkit-multihead", "version": 1, "tasks":
                                                        {name: {"task", "problem_type", "labels", "max_length",
                                                        "head"}}}
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from bertkit.data.features import Features
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import pick_device
from bertkit.errors import CheckpointError
from bertkit.inference.engine import Engine
from bertkit.model.bert import BertModel
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.families import family_of, write_config
from bertkit.model.heads import SequenceClassifier, TokenClassifier, strip_task_keys
from bertkit.model.weights import read_state_dict, save_weights
from bertkit.task_model import PROBLEM_TYPE, TaskModel, build_head
from bertkit.utils.atomic import atomic_path, atomic_write_text

METHODS = ("task_arithmetic", "dare")
MANIFEST = "multihead.json"
HEADS_DIR = "heads"
_FORMAT = "bertkit-multihead"
# Architecture settings that change what the weights compute without changing any tensor's shape (the family's
# own included: positions, relative attention, windows), so models of two families never merge.
_ARCH_FIELDS = ("model_type", "hidden_act", "position_embedding_type", "prenorm", "ffn_type", "rope_theta",
                "layer_norm_eps", "use_bias", "final_norm", "pruned_heads", "position_offset", "embedding_projection",
                "first_layer_attn_norm", "relative_attention", "pos_att_type", "position_buckets",
                "max_relative_positions", "share_att_key", "norm_rel_ebd", "layer_types", "local_attention",
                "local_rope_theta", "sinusoidal_positions")
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

ModelLike = BertModel | nn.Module | TaskModel | str | os.PathLike


def encoder_of(model: Any) -> BertModel:
    """The BertModel inside a BertModel, task head, TaskModel, or model directory (loaded)."""
    if isinstance(model, BertModel):
        return model
    if isinstance(model, TaskModel):
        return model.head.encoder
    if isinstance(model, str | os.PathLike):
        encoder, _, _ = load_encoder(model, who="merging")
        strip_task_keys(encoder.config)
        return encoder
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, BertModel):
        return encoder
    raise TypeError(f"expected a BertModel, task head, TaskModel or model directory, got {type(model).__name__}")


def check_compatible(base: BertModel, models: Mapping[str, BertModel]) -> None:
    """Raise ValueError naming the first tensor (or setting) where a model's encoder differs from the base's."""
    ref = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    for name, model in models.items():
        state = model.state_dict()
        missing = [k for k in ref if k not in state]
        extra = [k for k in state if k not in ref]
        if missing or extra:
            what = (f"lacks tensor '{missing[0]}'" if missing else f"has tensor '{extra[0]}'") + " that the base " + \
                   ("has" if missing else "lacks")
            raise ValueError(f"{name} {what} ({len(missing)} missing, {len(extra)} extra): not the base's "
                             "architecture (a factorised or pruned model, or a base without a pooler?)")
        for k, shape in ref.items():
            if tuple(state[k].shape) != shape:
                raise ValueError(f"{name}: tensor '{k}' has shape {tuple(state[k].shape)}, the base's has {shape}")
        for f in _ARCH_FIELDS:
            a, b = getattr(model.config, f, None), getattr(base.config, f, None)
            if a != b:
                raise ValueError(f"{name}: config {f}={a!r}, the base has {f}={b!r}")


def _named(models: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return dict(models)
    if isinstance(models, str | os.PathLike | nn.Module | TaskModel):
        raise TypeError("models must be a list (or {name: model}) of models, not a single model")
    return {f"model {i}": m for i, m in enumerate(models)}


def task_vectors(base: ModelLike, finetuned: ModelLike) -> dict[str, Tensor]:
    """{tensor name: finetuned - base} over the encoder's floating-point tensors, float64 (exact)."""
    b, f = encoder_of(base), encoder_of(finetuned)
    check_compatible(b, {"finetuned model": f})
    fs = f.state_dict()
    return {k: fs[k].detach().double().cpu() - v.detach().double().cpu()
            for k, v in b.state_dict().items() if v.is_floating_point()}


def _check_drop_rate(drop_rate: float) -> None:
    if not 0 <= drop_rate < 1:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")


def _dare_tensor(delta: Tensor, p: float, generator: torch.Generator) -> Tensor:
    # The mask is drawn on the CPU in float32 so a seed gives the same mask whatever the delta's device/dtype.
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) >= p  # P(keep) = 1 - p
    return torch.where(keep.to(delta.device), delta / (1 - p), torch.zeros((), dtype=delta.dtype,
                                                                            device=delta.device))


def dare(delta: Mapping[str, Tensor] | Tensor, drop_rate: float, seed: int = 0) -> dict[str, Tensor] | Tensor:
    """Drop And REscale: zero each entry with probability ``drop_rate``, scale the rest by 1/(1 - drop_rate).

    delta: one tensor or a task vector {name: tensor} (drawn in its order from one seeded generator).
    drop_rate 0 returns the delta unchanged (copies).
    """
    _check_drop_rate(drop_rate)
    g = torch.Generator().manual_seed(seed)
    if isinstance(delta, Tensor):
        return delta.clone() if drop_rate == 0 else _dare_tensor(delta, drop_rate, g)
    return {k: v.clone() if drop_rate == 0 else _dare_tensor(v, drop_rate, g) for k, v in delta.items()}


@torch.no_grad()
def merge(base: ModelLike, models: Sequence[ModelLike] | Mapping[str, ModelLike],
          weights: Sequence[float] | None = None, method: str = "task_arithmetic", drop_rate: float = 0.9,
          scaling: float = 1.0, seed: int = 0) -> BertModel:
    """A new encoder: base + scaling * sum_i w_i * delta_i, the deltas DARE'd when ``method="dare"``.

    weights: one per model (default 1/n each). drop_rate: DARE's p (ignored by task_arithmetic). Model i's
    DARE masks come from seed + i, drawn tensor by tensor in the encoder's order, so the result equals
    base + scaling * sum_i w_i * dare(task_vectors(base, model_i), drop_rate, seed + i).
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    p = drop_rate if method == "dare" else 0.0
    _check_drop_rate(p)
    base_enc = encoder_of(base)
    named = {k: encoder_of(m) for k, m in _named(models).items()}
    if not named:
        raise ValueError("merge needs at least one fine-tuned model")
    w = [1.0 / len(named)] * len(named) if weights is None else [float(x) for x in weights]
    if len(w) != len(named):
        raise ValueError(f"{len(w)} weights for {len(named)} models")
    check_compatible(base_enc, named)
    states = [m.state_dict() for m in named.values()]
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(states))]
    merged = copy.deepcopy(base_enc)
    strip_task_keys(merged.config)
    out = merged.state_dict()
    for k, b in base_enc.state_dict().items():
        if not b.is_floating_point():
            continue
        b64 = b.detach().double()
        total = torch.zeros_like(b64)
        for state, wi, g in zip(states, w, gens, strict=True):
            delta = state[k].detach().to(b.device).double() - b64
            if p:
                delta = _dare_tensor(delta, p, g)
            total += wi * delta
        out[k].copy_((b64 + scaling * total).to(b.dtype))
    return merged.eval()


# ---- one merged encoder, one head per task --------------------------------------------------------
class MultiHeadModel:
    """One encoder shared by several task heads: ``predict(texts, task=name)``.

    Each task is a TaskModel whose head holds the shared encoder and that task's own classifier, so
    predict/evaluate behave exactly as the task's own model would on this encoder.
    """

    def __init__(self, encoder: BertModel, tokenizer: Tokenizer, tasks: Mapping[str, TaskModel]) -> None:
        if not tasks:
            raise ValueError("a MultiHeadModel needs at least one task")
        for name, tm in tasks.items():
            _check_task_name(name)
            if tm.head.encoder is not encoder:
                raise ValueError(f"task {name!r}: its head does not use the shared encoder")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.task_models = dict(tasks)

    @classmethod
    def from_task_models(cls, encoder: BertModel, models: Mapping[str, TaskModel],
                         device: str | torch.device | None = None) -> MultiHeadModel:
        """Each model's task head (its own parts, copied) on ``encoder``; the tokenizers must be one and the same."""
        if not models:
            raise ValueError("from_task_models needs at least one task model")
        first_name, first = next(iter(models.items()))
        fingerprint = first.tokenizer.fingerprint()
        for name, tm in models.items():
            _check_task_name(name)
            if tm.tokenizer.fingerprint() != fingerprint:
                raise ValueError(f"task {name!r} uses a different tokenizer than task {first_name!r}; "
                                 "a shared encoder needs one vocabulary")
        dev = pick_device(device)
        engine = Engine()
        engine.prepare(encoder, first.tokenizer, dev, "merged encoder")
        tasks = {}
        for name, tm in models.items():
            head = build_head(encoder, tm.task, tm.head.num_labels)
            head.load_head_state(head_tensors(tm.head), source=f"task {name!r}")
            tasks[name] = TaskModel(head.to(dev).eval(), first.tokenizer, tm.task, tm.labels, tm.max_length,
                                    engine=engine, scheme=tm.scheme)
        return cls(encoder, first.tokenizer, tasks)

    @property
    def tasks(self) -> list[str]:
        return list(self.task_models)

    def __getitem__(self, task: str) -> TaskModel:
        if task not in self.task_models:
            raise KeyError(f"unknown task {task!r}; this model has {', '.join(map(repr, self.task_models))}")
        return self.task_models[task]

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], task: str, pairs: Sequence[str] | None = None,
                batch_size: int | None = None) -> list[dict[str, Any]]:
        """``TaskModel.predict`` of task ``task``'s head (see there for the output per task type)."""
        return self[task].predict(texts, pairs=pairs, batch_size=batch_size)

    def evaluate(self, data: TaskData | Features, task: str, batch_size: int | None = None,
                 gold: TaskData | None = None) -> dict[str, float]:
        return self[task].evaluate(data, batch_size=batch_size, gold=gold)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        d = Path(directory)
        (d / HEADS_DIR).mkdir(parents=True, exist_ok=True)
        write_config(self.encoder.config, d)
        save_weights(self.encoder, d)
        self.tokenizer.save(d)
        manifest: dict[str, Any] = {"format": _FORMAT, "version": 1, "tasks": {}}
        for name, tm in self.task_models.items():
            rel = f"{HEADS_DIR}/{name}.safetensors"
            state = head_tensors(tm.head)
            with atomic_path(d / rel) as tmp:
                save_file(state, str(tmp), metadata={"format": "pt"})
            manifest["tasks"][name] = {"task": tm.task, "problem_type": tm.head.problem_type, "labels": tm.labels,
                                       "max_length": tm.max_length, "head": rel}
        atomic_write_text(d / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: marks a complete save
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> MultiHeadModel:
        d = Path(directory)
        if not (d / MANIFEST).is_file():
            raise CheckpointError(f"{d}: no {MANIFEST}; not a MultiHeadModel directory")
        try:
            manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{d / MANIFEST}: not valid JSON ({e})") from None
        if manifest.get("format") != _FORMAT or not isinstance(manifest.get("tasks"), dict):
            raise CheckpointError(f"{d / MANIFEST}: expected format {_FORMAT!r} with a 'tasks' object")
        info = inspect_model_dir(d)
        encoder, _, _ = load_encoder(info, who="a MultiHeadModel")
        strip_task_keys(encoder.config)
        tokenizer = Tokenizer.from_dir(info.weights_dir)
        dev = pick_device(device)
        engine = Engine()
        engine.prepare(encoder, tokenizer, dev, str(d))
        tasks = {}
        for name, spec in manifest["tasks"].items():
            _check_task_name(name)
            missing = [k for k in ("task", "labels", "head") if k not in spec]
            if missing:
                raise CheckpointError(f"{d / MANIFEST}: task {name!r} lacks {', '.join(missing)}")
            task, labels = spec["task"], [str(x) for x in spec["labels"]]
            if task not in PROBLEM_TYPE:
                raise CheckpointError(f"{d / MANIFEST}: task {name!r} has unknown type {task!r}")
            head_file = d / spec["head"]
            if not head_file.is_file():
                raise CheckpointError(f"{d / MANIFEST}: task {name!r}: head file {head_file} is missing")
            head = build_head(encoder, task, max(len(labels), 1))
            head.load_head_state(read_state_dict(head_file), source=str(head_file))
            max_length = int(spec.get("max_length") or min(512, encoder.config.max_tokens))
            tasks[name] = TaskModel(head.to(dev).eval(), tokenizer, task, labels, max_length, d, engine)
        return cls(encoder, tokenizer, tasks)


def head_tensors(head: SequenceClassifier | TokenClassifier) -> dict[str, Tensor]:
    """A task head's own tensors (not the encoder's) under its family's HF names, as ``load_head_state`` reads them."""
    prefix = family_of(head.encoder.config).prefix + "."
    return {k: v for k, v in head.hf_state_dict().items() if not k.startswith(prefix)}


def _check_task_name(name: str) -> None:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '-', '.' (it names a file)")


def merge_task_models(base: ModelLike, models: Mapping[str, TaskModel], weights: Sequence[float] | None = None,
                      method: str = "task_arithmetic", drop_rate: float = 0.9, scaling: float = 1.0, seed: int = 0,
                      device: str | torch.device | None = None) -> MultiHeadModel:
    """merge() the task models' encoders onto ``base``, then give each task its own head on the result."""
    encoder = merge(base, {name: tm.head.encoder for name, tm in models.items()}, weights, method, drop_rate,
                    scaling, seed)
    return MultiHeadModel.from_task_models(encoder, models, device=device)


__all__ = ["METHODS", "MultiHeadModel", "check_compatible", "dare", "encoder_of", "head_tensors", "merge",
           "merge_task_models", "task_vectors"]
