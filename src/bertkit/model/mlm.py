"""The masked-language-model head and the encoder + head pair pretraining trains.

``MLMHead``  h -> dense -> act -> LayerNorm -> h @ E^T + bias, with E the word embeddings (tied), as
             transformers' ``BertOnlyMLMHead``. It runs on the masked rows only ("sparse prediction"):
             with 30% masking and a 30k vocabulary the decoder is the single largest matmul of a MiniLM
             step, so skipping the unmasked 70% of rows saves most of it.
``MaskedLM`` the encoder plus the head; saved in ``BertForMaskedLM`` layout (``bert.*`` +
             ``cls.predictions.*``), so transformers loads it. A checkpoint without an MLM head (e.g.
             all-MiniLM-L6-v2, a sentence model) gets a freshly initialised one, logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from bertkit.errors import CheckpointError
from bertkit.model.attention import Packing
from bertkit.model.bert import _ACTIVATIONS, BertModel
from bertkit.model.fused_ce import linear_cross_entropy
from bertkit.model.weights import hf_state_dict, load_pretrained, write_safetensors

log = logging.getLogger("bertkit")

HEAD_PREFIX = "cls.predictions."
# (HF name, ours); the decoder weight is the word embedding matrix, so it is never stored twice.
_HEAD_KEYS = [("transform.dense.weight", "dense.weight"), ("transform.dense.bias", "dense.bias"),
              ("transform.LayerNorm.weight", "norm.weight"), ("transform.LayerNorm.bias", "norm.bias"),
              ("bias", "bias")]


class MLMHead(nn.Module):
    def __init__(self, hidden: int, out_hidden: int, act: str, eps: float, word_embeddings: nn.Embedding) -> None:
        """hidden: the encoder's width; out_hidden: the embedding width the decoder projects onto."""
        super().__init__()
        self.dense = nn.Linear(hidden, out_hidden)
        self.act = _ACTIVATIONS[act]
        self.norm = nn.LayerNorm(out_hidden, eps=eps)
        self.word_embeddings = word_embeddings  # shared module, not a copy: the decoder is tied
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def transform(self, h: Tensor) -> Tensor:
        """(n_masked, hidden) -> (n_masked, out_hidden), the decoder's input."""
        return self.norm(self.act(self.dense(h)))

    def forward(self, h: Tensor) -> Tensor:
        """h: (n_masked, hidden) -> logits (n_masked, vocab)."""
        return torch.nn.functional.linear(self.transform(h), self.word_embeddings.weight, self.bias)

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the logits against targets (n_masked,), without keeping the logits."""
        return linear_cross_entropy(self.transform(h), self.word_embeddings.weight, self.bias, targets)

    def own_state(self) -> dict[str, Tensor]:
        """The head's tensors under HF names (the tied decoder excluded)."""
        ours = {"dense.weight": self.dense.weight, "dense.bias": self.dense.bias, "norm.weight": self.norm.weight,
                "norm.bias": self.norm.bias, "bias": self.bias}
        return {HEAD_PREFIX + hf: ours[o].detach().cpu().contiguous().clone() for hf, o in _HEAD_KEYS}

    def load_own_state(self, heads: dict[str, Tensor], source: str) -> None:
        ours = {"dense.weight": self.dense.weight, "dense.bias": self.dense.bias, "norm.weight": self.norm.weight,
                "norm.bias": self.norm.bias, "bias": self.bias}
        with torch.no_grad():
            for hf, o in _HEAD_KEYS:
                src = heads.get(HEAD_PREFIX + hf)
                if src is None and hf == "bias":  # older checkpoints keep it as the decoder's bias
                    src = heads.get(HEAD_PREFIX + "decoder.bias")
                if src is None:
                    raise CheckpointError(f"{source}: MLM head tensor '{HEAD_PREFIX + hf}' is missing")
                if tuple(src.shape) != tuple(ours[o].shape):
                    raise CheckpointError(f"{source}: tensor '{HEAD_PREFIX + hf}' has shape {tuple(src.shape)}, "
                                          f"expected {tuple(ours[o].shape)}")
                ours[o].copy_(src)


def has_mlm_head(heads: dict[str, Tensor]) -> bool:
    return any(k.startswith(HEAD_PREFIX) for k in heads)


class MaskedLM(nn.Module):
    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        cfg = encoder.config
        self.encoder = encoder
        if encoder.pooler is not None:  # kept and saved, but MLM does not train it (and DDP must not wait for it)
            encoder.pooler.requires_grad_(False)
        self.head = MLMHead(cfg.hidden_size, cfg.hidden_size, cfg.hidden_act, cfg.layer_norm_eps,
                            encoder.embeddings.word)
        self.head.dense.apply(encoder._init_weights)

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

    # ---- HF BertForMaskedLM layout ------------------------------------------------------------
    def hf_state_dict(self) -> dict[str, Tensor]:
        state = {f"bert.{k}": v for k, v in hf_state_dict(self.encoder).items()}
        state.update(self.head.own_state())
        return state

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(self.encoder.config, extra={**self.encoder.config.extra,
                                                              "architectures": ["BertForMaskedLM"]})
        cfg.save(d)
        write_safetensors(self.hf_state_dict(), d)
        return d

    @classmethod
    def from_encoder(cls, encoder: BertModel, heads: dict[str, Tensor], source: str) -> MaskedLM:
        """The encoder plus the MLM head found among ``heads`` (a checkpoint's head tensors), or a new one."""
        model = cls(encoder)
        if has_mlm_head(heads):
            model.head.load_own_state(heads, source)
        else:
            log.info("%s has no MLM head: created a new one (initialised, not trained)", source)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], path: str = "unpadded") -> MaskedLM:
        """An encoder directory with or without an MLM head; a missing head is created (and logged)."""
        encoder, heads = load_pretrained(directory, path=path)
        return cls.from_encoder(encoder, heads, str(directory))
