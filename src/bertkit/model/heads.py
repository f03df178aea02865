"""Task heads on top of the encoder, laid out as each family's ``XxxFor*`` classes in transformers.

``SequenceClassifier``  pooled states -> [dense -> act -> norm] -> dropout -> Linear(hidden, num_labels)
                        (``XxxForSequenceClassification``; BERT's dense + tanh is the encoder's own pooler)
``TokenClassifier``     token states  -> [dense -> act -> norm] -> dropout -> Linear(hidden, num_labels)
                        (``XxxForTokenClassification``; only ModernBERT has the dense part)
``QuestionAnsweringHead`` token states -> [dense -> act -> norm] -> [dropout] -> Linear(hidden, 2): start and end
                        logits (``XxxForQuestionAnswering``: ``qa_outputs``, ModernBERT's ``head`` + ``classifier``)

Which parts exist, their HF names, the activation and the pooling (first token, or the mean for ModernBERT with
``classifier_pooling: mean``) come from the family's ``ClassifierSpec`` (``model/families/``). Both heads run on the
padding-free path: inputs are packed ``(total_tokens,)`` ids with a ``Packing``. Saved checkpoints use the family's
names (``roberta.*`` + ``classifier.dense`` + ``classifier.out_proj`` ...) and HF config keys (``id2label``,
``label2id``, ``problem_type``, ``architectures``), so transformers loads them with the same predictions.
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
from bertkit.model.bert import ACTIVATIONS, BertModel, Pooler, layer_norm
from bertkit.model.config import EncoderConfig
from bertkit.model.dropout import Dropout
from bertkit.model.families import ClassifierSpec, config_value, family_of, write_config
from bertkit.model.pooling import segment_sum
from bertkit.model.weights import prefixed_state_dict, write_safetensors

# bertkit task name -> transformers problem_type of its head
PROBLEM_TYPE = {"classification": "single_label_classification", "pair-classification": "single_label_classification",
                "multilabel": "multi_label_classification", "regression": "regression",
                "ner": "single_label_classification"}
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
TASK_KEYS = ("architectures", "id2label", "label2id", "problem_type")
_TASK_KEYS = TASK_KEYS  # deprecated name
# Deprecated: BERT's class names only; ``family_of(cfg).architecture(model_type, kind)`` names every family's.
_ARCHITECTURES = {"sequence": "BertForSequenceClassification", "token": "BertForTokenClassification"}


def check_problem_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem_type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")


def strip_task_keys(cfg: EncoderConfig) -> None:
    """Drop the head keys ``save_pretrained`` adds to a config, leaving a plain encoder config."""
    cfg.extra = {k: v for k, v in cfg.extra.items() if k not in TASK_KEYS}


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


def pool_packed(h: Tensor, packing: Packing, pooling: str) -> Tensor:
    """(total_tokens, hidden) -> (batch, hidden): the first token of each sequence, or the mean of its tokens."""
    if pooling == "cls":
        return h[packing.cu_seqlens[:-1]]
    lengths = packing.cu_seqlens[1:] - packing.cu_seqlens[:-1]
    return segment_sum(h, lengths) / lengths.to(h.dtype)[:, None]


def pool_padded(h: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """(batch, seq, hidden), mask (batch, seq) -> (batch, hidden), as ``pool_packed`` (ONNX export uses it)."""
    if pooling == "cls":
        return h[:, 0]
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(1) / m.sum(1)


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
        self.family = family_of(cfg)
        self.spec: ClassifierSpec = getattr(self.family, self.kind)  # Family.sequence / .token / .qa
        self.encoder = encoder
        self.num_labels = num_labels
        self.problem_type = problem_type
        p = cfg.classifier_dropout if dropout is None else dropout
        self.dropout = Dropout(cfg.hidden_dropout_prob if p is None else p)
        h = cfg.hidden_size
        spec = self.spec
        self.dense = nn.Linear(h, h, bias=bool(config_value(cfg, spec.dense_bias))) if spec.dense else None
        self.act = ACTIVATIONS[config_value(cfg, spec.activation)]
        self.norm = layer_norm(cfg) if spec.norm else None
        self.pooling = config_value(cfg, spec.pooling)
        self.classifier = nn.Linear(h, num_labels)
        for m in (self.dense, self.classifier):
            if m is not None:
                nn.init.normal_(m.weight, std=cfg.initializer_range)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def logits_from(self, x: Tensor) -> Tensor:
        """Pooled (batch, hidden) or token (tokens, hidden) states -> logits (..., num_labels), any layout."""
        if self.spec.uses_pooler:
            x = self.encoder.pooler(x)  # BERT: dense + tanh, in the encoder
        elif self.dense is not None:
            if self.spec.dropout_first:
                x = self.dropout(x)
            x = self.act(self.dense(x))
            if self.norm is not None:
                x = self.norm(x)
        return self.classifier(self.dropout(x))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return task_loss(self.problem_type, logits, labels)

    # ---- the family's HF layout -------------------------------------------------------------
    def _own_modules(self) -> dict[str, nn.Module]:
        """HF name -> our module, for the head's own parts (not the encoder's)."""
        spec = self.spec
        out: dict[str, nn.Module] = {spec.out: self.classifier}
        if self.dense is not None:
            out[spec.dense] = self.dense
        if self.norm is not None:
            out[spec.norm] = self.norm
        return out

    def hf_state_dict(self) -> dict[str, Tensor]:
        state = prefixed_state_dict(self.encoder)
        for name, module in self._own_modules().items():
            for k, v in module.state_dict().items():
                state[f"{name}.{k}"] = v.detach().cpu().contiguous().clone()
        return state

    def save_pretrained(self, directory: str | os.PathLike[str], id2label: dict[int, str] | None = None) -> Path:
        """Write config.json (with id2label/label2id/problem_type) and model.safetensors, HF layout."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        labels = id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if len(labels) != self.num_labels:
            raise ValueError(f"id2label has {len(labels)} entries for {self.num_labels} labels")
        cfg = self.encoder.config
        # A copy: the encoder's own config stays a plain encoder config.
        cfg = dataclasses.replace(cfg, extra={
            **cfg.extra,
            "id2label": {str(i): str(name) for i, name in labels.items()},
            "label2id": {str(name): int(i) for i, name in labels.items()},
            "problem_type": self.problem_type,
        })
        write_config(cfg, d, self.family.architecture(cfg.model_type, self.kind))
        write_safetensors(self.hf_state_dict(), d)
        return d

    def load_head_state(self, heads: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Fill the head's own parts from the task-head tensors of an HF checkpoint, strictly."""
        want = {f"{name}.{k}": v for name, m in self._own_modules().items() for k, v in m.state_dict().items()}
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
        if self.spec.uses_pooler and encoder.pooler is None:  # BertForSequenceClassification classifies its output
            encoder.pooler = Pooler(encoder.config)
            encoder.pooler.apply(encoder._init_weights)

    def logits_from_states(self, h: Tensor, packing: Packing) -> Tensor:
        """Packed token states (total_tokens, hidden) -> logits (batch, num_labels)."""
        return self.logits_from(pool_packed(h, packing, self.pooling))

    def forward(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,) -> logits (batch, num_labels)."""
        h = self.encoder.forward_packed(input_ids, packing, token_type_ids)  # (total_tokens, hidden)
        return self.logits_from_states(h, packing)


class TokenClassifier(_Head):
    """A label per token (BIO tagging)."""

    kind = "token"

    def logits_from_states(self, h: Tensor, packing: Packing | None = None) -> Tensor:
        return self.logits_from(h)

    def forward(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,) -> logits (total_tokens, num_labels)."""
        return self.logits_from(self.encoder.forward_packed(input_ids, packing, token_type_ids))


class QuestionAnsweringHead(_Head):
    """Extractive QA: a start and an end logit per token (``XxxForQuestionAnswering``)."""

    kind = "qa"

    def __init__(self, encoder: BertModel, dropout: float | None = None) -> None:
        if dropout is None:  # as each family's XxxForQuestionAnswering trains: most apply no dropout before the
            # output layer; DistilBERT its qa_dropout, ModernBERT its classifier_dropout (None: that default)
            name = family_of(encoder.config).name
            dropout = {"distilbert": float(encoder.config.extra.get("qa_dropout", 0.1)),
                       "modernbert": None}.get(name, 0.0)
        super().__init__(encoder, 2, dropout=dropout)

    def logits_from_states(self, h: Tensor, packing: Packing | None = None) -> Tensor:
        return self.logits_from(h)

    def hf_state_dict(self) -> dict[str, Tensor]:
        # XxxForQuestionAnswering builds its encoder without the pooler: leave it out rather than have
        # transformers report it as unexpected
        pooler = f"{self.family.prefix}.pooler."
        return {k: v for k, v in super().hf_state_dict().items() if not k.startswith(pooler)}

    def forward(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,) -> logits (total_tokens, 2): [:, 0] start, [:, 1] end."""
        return self.logits_from(self.encoder.forward_packed(input_ids, packing, token_type_ids))

    def loss(self, logits: Tensor, labels: Tensor, packing: Packing | None = None) -> Tensor:
        """logits (total_tokens, 2), labels (batch, 2) start/end token positions within each sequence ->
        the mean of the start and end cross-entropies, as transformers' ``XxxForQuestionAnswering``."""
        if packing is None:
            raise ValueError("QuestionAnsweringHead.loss needs the batch's packing")
        # (batch, longest): padding at -inf has no probability, so the softmax is over each sequence's own tokens
        start, end = (torch.nn.utils.rnn.pad_sequence(list(logits[:, j].float().split(packing.lengths)),
                                                      batch_first=True, padding_value=float("-inf")) for j in (0, 1))
        return (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2


def build_head(encoder: BertModel, task: str, num_labels: int) -> SequenceClassifier | TokenClassifier:
    """The head a bertkit task trains: token classification for "ner", else sequence classification (one output
    for regression)."""
    if task not in PROBLEM_TYPE:  # the task names of bertkit.data.tasks.TASKS
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(PROBLEM_TYPE)}")
    if task == "ner":
        return TokenClassifier(encoder, num_labels)
    return SequenceClassifier(encoder, 1 if task == "regression" else num_labels, PROBLEM_TYPE[task])
