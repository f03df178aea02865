"""Task heads on top of the encoder, laid out as transformers' BertFor* classes.

``SequenceClassifier``  pooler output -> dropout -> Linear(hidden, num_labels)   (BertForSequenceClassification)
``TokenClassifier``     token states  -> dropout -> Linear(hidden, num_labels)   (BertForTokenClassification)

Both run on the padding-free path: inputs are packed ``(total_tokens,)`` ids with a ``Packing``.
Saved checkpoints use HF names (``bert.*`` + ``classifier.*``) and HF config keys (``id2label``,
``label2id``, ``problem_type``, ``architectures``) so transformers loads them with the same predictions.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.errors import CheckpointError
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel, Pooler
from bertkit.model.config import EncoderConfig
from bertkit.model.dropout import Dropout
from bertkit.model.weights import hf_state_dict, write_safetensors

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
_TASK_KEYS = ("architectures", "id2label", "label2id", "problem_type")
_ARCHITECTURES = {"sequence": "BertForSequenceClassification", "token": "BertForTokenClassification"}


def check_problem_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem_type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")


def strip_task_keys(cfg: EncoderConfig) -> None:
    """Drop the head keys ``save_pretrained`` adds to a config, leaving a plain encoder config."""
    cfg.extra = {k: v for k, v in cfg.extra.items() if k not in _TASK_KEYS}


def task_loss(problem_type: str, logits: Tensor, labels: Tensor) -> Tensor:
    """The loss transformers uses for each ``problem_type``.

    logits (n, num_labels); labels (n,) int for single-label (-100 = ignore), (n, num_labels) 0/1 float
    for multi-label, (n,) float for regression with num_labels == 1.
    """
    check_problem_type(problem_type)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.mse_loss(logits.float().squeeze(-1), labels.float())  # regression


class _Head(nn.Module):
    kind = ""

    def __init__(self, encoder: BertModel, num_labels: int, problem_type: str = "single_label_classification",
                 dropout: float | None = None) -> None:
        super().__init__()
        check_problem_type(problem_type)
        if problem_type == "regression" and num_labels != 1:
            raise ValueError(f"regression needs num_labels=1, got {num_labels}")
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        cfg = encoder.config
        self.encoder = encoder
        self.num_labels = num_labels
        self.problem_type = problem_type
        p = cfg.classifier_dropout if dropout is None else dropout
        self.dropout = Dropout(cfg.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=cfg.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return task_loss(self.problem_type, logits, labels)

    def hf_state_dict(self) -> dict[str, Tensor]:
        state = {f"bert.{k}": v for k, v in hf_state_dict(self.encoder).items()}
        for k, v in self.classifier.state_dict().items():
            state[f"classifier.{k}"] = v.detach().cpu().contiguous().clone()
        return state

    def save_pretrained(self, directory: str | os.PathLike[str], id2label: dict[int, str] | None = None) -> Path:
        """Write config.json (with id2label/label2id/problem_type) and model.safetensors, HF layout."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        labels = id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if len(labels) != self.num_labels:
            raise ValueError(f"id2label has {len(labels)} entries for {self.num_labels} labels")
        # A copy: the encoder's own config stays a plain encoder config.
        cfg = dataclasses.replace(self.encoder.config, extra={
            **self.encoder.config.extra,
            "architectures": [_ARCHITECTURES[self.kind]],
            "id2label": {str(i): str(name) for i, name in labels.items()},
            "label2id": {str(name): int(i) for i, name in labels.items()},
            "problem_type": self.problem_type,
        })
        cfg.save(d)
        write_safetensors(self.hf_state_dict(), d)
        return d

    def load_head_state(self, heads: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Fill the classifier from the ``classifier.*`` tensors of an HF checkpoint, strictly."""
        want = {f"classifier.{k}": v for k, v in self.classifier.state_dict().items()}
        missing = [k for k in want if k not in heads]
        if missing:
            raise CheckpointError(f"{source}: missing head tensors: {', '.join(missing)}")
        with torch.no_grad():
            for k, dst in want.items():
                if tuple(heads[k].shape) != tuple(dst.shape):
                    raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(heads[k].shape)}, "
                                          f"expected {tuple(dst.shape)} ({self.num_labels} labels)")
                dst.copy_(heads[k])


class SequenceClassifier(_Head):
    """Classification or regression of whole sequences (single texts or text pairs)."""

    kind = "sequence"

    def __init__(self, encoder: BertModel, num_labels: int, problem_type: str = "single_label_classification",
                 dropout: float | None = None) -> None:
        super().__init__(encoder, num_labels, problem_type, dropout)
        if encoder.pooler is None:  # BertForSequenceClassification classifies the pooler output
            encoder.pooler = Pooler(encoder.config)
            encoder.pooler.apply(encoder._init_weights)

    def forward(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,) -> logits (batch, num_labels)."""
        h = self.encoder.forward_packed(input_ids, packing, token_type_ids)  # (total_tokens, hidden)
        return self.classifier(self.dropout(self.encoder.pool(h, packing)))


class TokenClassifier(_Head):
    """A label per token (BIO tagging)."""

    kind = "token"

    def forward(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,) -> logits (total_tokens, num_labels)."""
        h = self.encoder.forward_packed(input_ids, packing, token_type_ids)
        return self.classifier(self.dropout(h))
