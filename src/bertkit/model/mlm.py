"""The masked-language-model head and the encoder + head pair pretraining trains.

``MLMHead``  h -> dense -> act -> LayerNorm -> h @ E^T + bias, with E the word embeddings (tied), as
             transformers' ``BertOnlyMLMHead`` and every family's MLM head (names and activation from the
             family's ``MLMSpec``: ``lm_head.*`` for RoBERTa, ``generator_predictions.*`` for ELECTRA ...).
             It runs on the masked rows only ("sparse prediction"):
             with 30% masking and a 30k vocabulary the decoder is the single largest matmul of a MiniLM
             step, so skipping the unmasked 70% of rows saves most of it.
``MaskedLM`` the encoder plus the head; saved in the family's ``XxxForMaskedLM`` layout (``bert.*`` +
             ``cls.predictions.*``, ``roberta.*`` + ``lm_head.*`` ...), so transformers loads it. A checkpoint
             without an MLM head (e.g. all-MiniLM-L6-v2, a sentence model) gets a freshly initialised one, logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from bertkit.errors import CheckpointError
from bertkit.model.attention import Packing
from bertkit.model.bert import ACTIVATIONS, BertModel
from bertkit.model.families import FAMILIES, MLMSpec, config_value, family_of, write_config
from bertkit.model.fused_ce import linear_cross_entropy
from bertkit.model.weights import load_pretrained, prefixed_state_dict, write_safetensors

log = logging.getLogger("bertkit")

HEAD_PREFIX = "cls.predictions."  # BERT's; other families' names are in their MLMSpec
BERT_MLM = FAMILIES["bert"].mlm


class MLMHead(nn.Module):
    def __init__(self, hidden: int, out_hidden: int, act: str, eps: float, word_embeddings: nn.Embedding,
                 dense_bias: bool = True, norm_bias: bool = True, decoder_bias: bool = True) -> None:
        """hidden: the encoder's width; out_hidden: the embedding width the decoder projects onto."""
        super().__init__()
        self.dense = nn.Linear(hidden, out_hidden, bias=dense_bias)
        self.act = ACTIVATIONS[act]
        self.norm = nn.LayerNorm(out_hidden, eps=eps, bias=norm_bias)
        self.word_embeddings = word_embeddings  # shared module, not a copy: the decoder is tied
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings)) if decoder_bias else None

    def transform(self, h: Tensor) -> Tensor:
        """(n_masked, hidden) -> (n_masked, out_hidden), the decoder's input."""
        return self.norm(self.act(self.dense(h)))

    def forward(self, h: Tensor) -> Tensor:
        """h: (n_masked, hidden) -> logits (n_masked, vocab)."""
        return torch.nn.functional.linear(self.transform(h), self.word_embeddings.weight, self.bias)

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the logits against targets (n_masked,), without keeping the logits."""
        return linear_cross_entropy(self.transform(h), self.word_embeddings.weight, self.bias, targets)

    def _named(self, spec: MLMSpec) -> dict[str, Tensor]:
        """HF name -> our tensor, the tied decoder excluded."""
        ours = {f"{spec.dense}.{k}": v for k, v in self.dense.named_parameters()}
        ours.update({f"{spec.norm}.{k}": v for k, v in self.norm.named_parameters()})
        if self.bias is not None:
            ours[spec.bias] = self.bias
        return ours

    def own_state(self, spec: MLMSpec = BERT_MLM) -> dict[str, Tensor]:
        """The head's tensors under the family's HF names (the tied decoder excluded)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self._named(spec).items()}

    def load_own_state(self, heads: dict[str, Tensor], source: str, spec: MLMSpec = BERT_MLM) -> None:
        with torch.no_grad():
            for hf, dst in self._named(spec).items():
                src = heads.get(hf)
                if src is None and hf == spec.bias and spec.decoder_bias:  # older checkpoints: the decoder's bias
                    src = heads.get(spec.decoder_bias)
                if src is None:
                    raise CheckpointError(f"{source}: MLM head tensor '{hf}' is missing")
                if tuple(src.shape) != tuple(dst.shape):
                    raise CheckpointError(f"{source}: tensor '{hf}' has shape {tuple(src.shape)}, "
                                          f"expected {tuple(dst.shape)}")
                dst.copy_(src)


def has_mlm_head(heads: dict[str, Tensor], spec: MLMSpec = BERT_MLM) -> bool:
    return f"{spec.dense}.weight" in heads


def mlm_head_for(encoder: BertModel) -> MLMHead:
    """A new MLM head in the layout of the encoder's family (``MLMSpec``), tied to its word embeddings."""
    cfg = encoder.config
    spec = family_of(cfg).mlm
    width = cfg.embedding_width if spec.width == "embedding" else cfg.hidden_size
    head = MLMHead(cfg.hidden_size, width, config_value(cfg, spec.activation), cfg.layer_norm_eps,
                   encoder.embeddings.word, dense_bias=bool(config_value(cfg, spec.dense_bias)),
                   norm_bias=cfg.norm_bias, decoder_bias=bool(config_value(cfg, spec.has_bias)))
    head.dense.apply(encoder._init_weights)
    return head


class MaskedLM(nn.Module):
    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        cfg = encoder.config
        self.encoder = encoder
        if encoder.pooler is not None:  # kept and saved, but MLM does not train it (and DDP must not wait for it)
            encoder.pooler.requires_grad_(False)
        self.spec = family_of(cfg).mlm
        self.head = mlm_head_for(encoder)

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids: Tensor, packing: Packing, positions: Tensor | None = None,
                targets: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids (total_tokens,); positions (n_masked,) rows to predict (None: all).

        Returns logits (n_masked, vocab), or with ``targets`` (n_masked,) the mean MLM loss (a scalar).
        """
        h = self.encoder.forward_packed(input_ids, packing, token_type_ids)  # (total_tokens, hidden)
        h = h if positions is None else h.index_select(0, positions)
        return self.head(h) if targets is None else self.head.loss(h, targets)

    # ---- the family's XxxForMaskedLM layout ---------------------------------------------------
    def hf_state_dict(self) -> dict[str, Tensor]:
        state = prefixed_state_dict(self.encoder)
        state.update(self.head.own_state(self.spec))
        return state

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.encoder.config
        write_config(cfg, d, family_of(cfg).architecture(cfg.model_type, "mlm"))
        write_safetensors(self.hf_state_dict(), d)
        return d

    @classmethod
    def from_encoder(cls, encoder: BertModel, heads: dict[str, Tensor], source: str) -> MaskedLM:
        """The encoder plus the MLM head found among ``heads`` (a checkpoint's head tensors), or a new one."""
        model = cls(encoder)
        if has_mlm_head(heads, model.spec):
            model.head.load_own_state(heads, source, model.spec)
        else:
            log.info("%s has no MLM head: created a new one (initialised, not trained)", source)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], path: str = "unpadded") -> MaskedLM:
        """An encoder directory with or without an MLM head; a missing head is created (and logged)."""
        encoder, heads = load_pretrained(directory, path=path)
        return cls.from_encoder(encoder, heads, str(directory))
