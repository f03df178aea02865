"""ELECTRA replaced-token detection (Clark et al. 2020).

A small generator (an MLM) fills the masked positions with samples from its own predictions; the
discriminator (the model we keep) labels every token as original or replaced. Both share the token
embeddings (and position/type embeddings and their LayerNorm), as the paper found best; the generator
is ``generator_fraction`` of the discriminator's width and reads the shared embeddings through a
linear projection (ELECTRA's ``embeddings_project``). Its MLM decoder projects back to the embedding
width and is tied to the word embeddings.

Loss = generator MLM loss + ``disc_weight`` (50 in the paper) x discriminator BCE over all tokens.
The sample is drawn without gradient, so the discriminator loss never reaches the generator.
After pretraining only ``discriminator`` is saved as the encoder to fine-tune.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.model.attention import Packing
from bertkit.model.bert import _ACTIVATIONS, BertModel, Embeddings
from bertkit.model.config import EncoderConfig
from bertkit.model.mlm import MLMHead


def generator_config(cfg: EncoderConfig, fraction: float) -> EncoderConfig:
    """The discriminator's config at ``fraction`` of its width (heads scaled too, head size kept)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"generator_fraction must be in (0, 1], got {fraction}")
    heads = max(1, round(cfg.num_attention_heads * fraction))
    return dataclasses.replace(cfg, hidden_size=heads * cfg.head_dim, num_attention_heads=heads,
                               intermediate_size=max(1, round(cfg.intermediate_size * fraction)),
                               extra=dict(cfg.extra))


class _ProjectedEmbeddings(nn.Module):
    """The discriminator's embeddings, projected to the generator's width: (..., H) -> (..., h)."""

    def __init__(self, shared: Embeddings, width: int) -> None:
        super().__init__()
        self.shared = shared
        self.project = nn.Linear(shared.word.embedding_dim, width)

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.project(self.shared(input_ids, position_ids, token_type_ids))


class DiscriminatorHead(nn.Module):
    """h -> dense -> act -> Linear(hidden, 1): one logit per token, > 0 means 'replaced'."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.out = nn.Linear(cfg.hidden_size, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.act(self.dense(h))).squeeze(-1)  # (total_tokens,)


@dataclass
class ElectraOutput:
    loss: Tensor
    generator_loss: Tensor  # MLM cross-entropy on the masked positions
    discriminator_loss: Tensor  # BCE over all tokens
    generator_correct: int  # masked positions the generator predicted exactly (argmax)
    replaced: Tensor  # (total_tokens,) bool, the discriminator's targets
    disc_correct: int  # tokens the discriminator labelled right


def replaced_labels(input_ids: Tensor, positions: Tensor, sampled: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Put the generator's samples in; a token is 'replaced' only where the sample differs from the original.

    input_ids (total_tokens,) with masks; positions, sampled, targets (n_masked,)
    -> (corrupted ids (total_tokens,), replaced (total_tokens,) bool)
    """
    corrupted = input_ids.clone()
    corrupted[positions] = sampled
    replaced = torch.zeros_like(input_ids, dtype=torch.bool)
    replaced[positions] = sampled != targets
    return corrupted, replaced


class Electra(nn.Module):
    def __init__(self, discriminator: BertModel, generator_fraction: float = 0.25, disc_weight: float = 50.0) -> None:
        super().__init__()
        cfg = discriminator.config
        self.discriminator = discriminator
        if discriminator.pooler is not None:
            discriminator.pooler.requires_grad_(False)
        gcfg = generator_config(cfg, generator_fraction)
        self.generator = BertModel(gcfg, add_pooler=False, path=discriminator.path)
        self.generator.embeddings = _ProjectedEmbeddings(discriminator.embeddings, gcfg.hidden_size)
        self.generator.embeddings.project.apply(discriminator._init_weights)
        self.generator_head = MLMHead(gcfg.hidden_size, cfg.hidden_size, cfg.hidden_act, cfg.layer_norm_eps,
                                      discriminator.embeddings.word)
        self.generator_head.dense.apply(discriminator._init_weights)
        self.disc_head = DiscriminatorHead(cfg)
        self.disc_head.apply(discriminator._init_weights)
        self.disc_weight = disc_weight

    @property
    def config(self) -> EncoderConfig:
        return self.discriminator.config

    def forward(self, input_ids: Tensor, packing: Packing, positions: Tensor, targets: Tensor,
                token_type_ids: Tensor | None = None) -> ElectraOutput:
        """input_ids (total_tokens,) with masked positions; positions, targets (n_masked,)."""
        g = self.generator.forward_packed(input_ids, packing, token_type_ids)  # (total_tokens, h)
        g = g.index_select(0, positions)  # (n_masked, h)
        gen_loss = self.generator_head.loss(g, targets)
        with torch.no_grad():
            logits = self.generator_head(g).float()  # (n_masked, vocab), for sampling
            # Gumbel-max sampling from the generator's distribution (ELECTRA samples, not argmax)
            u = torch.rand_like(logits).clamp_(1e-9, 1.0)
            sampled = (logits - torch.log(-torch.log(u))).argmax(-1)
            gen_correct = int((logits.argmax(-1) == targets).sum())
        corrupted, replaced = replaced_labels(input_ids, positions, sampled, targets)
        d = self.discriminator.forward_packed(corrupted, packing, token_type_ids)  # (total_tokens, H)
        disc_logits = self.disc_head(d).float()
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits, replaced.float())
        disc_correct = int(((disc_logits > 0) == replaced).sum())
        return ElectraOutput(gen_loss + self.disc_weight * disc_loss, gen_loss, disc_loss, gen_correct, replaced,
                             disc_correct)
