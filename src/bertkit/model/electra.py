"""ELECTRA replaced-token detection (Clark et al. 2020).

A small generator (an MLM) fills the masked positions with samples from its own predictions; the
discriminator (the model we keep) labels every token as original or replaced. Both share the token
embeddings (and position/type embeddings and their LayerNorm), as the paper found best; the generator
is ``generator_fraction`` of the discriminator's width and reads the shared embeddings through a
linear projection (ELECTRA's ``embeddings_project``). Its MLM decoder projects back to the embedding
width and is tied to the word embeddings.

Loss = generator MLM loss + ``disc_weight`` (50 in the paper) x discriminator BCE over all tokens.
The sample is drawn without gradient, so the discriminator loss never reaches the generator.

What is saved: an ``electra``-family discriminator in transformers' ``ElectraForPreTraining`` layout (``electra.*``
plus the replaced-token head ``discriminator_predictions.*``, the family's ``extra_heads["pretraining"]`` table), so
transformers loads it and ELECTRA training can continue from it (``Electra.from_encoder`` takes the head back);
a discriminator of any other family as its plain base model (``XxxModel``: transformers has no ELECTRA head for
it). An ``electra``-family generator is saved beside it, in ``generator/``, as transformers'
``ElectraForMaskedLM`` (its own copy of the shared embedding tables, ``embeddings_project``, its layers,
``generator_predictions`` and the tied ``generator_lm_head``), and ``Electra.from_encoder(..., generator=DIR)``
takes such a generator back (ours, or one released with an ELECTRA discriminator), so continued ELECTRA training
keeps both halves. Without one, continued training starts a new generator (logged).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.errors import CheckpointError
from bertkit.model.attention import Packing
from bertkit.model.bert import ACTIVATIONS, BertModel, Embeddings
from bertkit.model.config import EncoderConfig
from bertkit.model.families import FAMILIES, family_of, write_config
from bertkit.model.mlm import MLMHead
from bertkit.model.weights import hf_key_map, hf_state_dict, load_pretrained, prefixed_state_dict, write_safetensors

log = logging.getLogger("bertkit")
PRETRAINING = "pretraining"  # the role (and Family.extra_heads key) of ElectraForPreTraining


def generator_config(cfg: EncoderConfig, fraction: float) -> EncoderConfig:
    """The discriminator's config at ``fraction`` of its width (heads scaled too, head size kept; a pruned
    discriminator's per-layer sizes are not carried over)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"generator_fraction must be in (0, 1], got {fraction}")
    heads = max(1, round(cfg.num_attention_heads * fraction))
    return dataclasses.replace(cfg, hidden_size=heads * cfg.head_dim, num_attention_heads=heads,
                               intermediate_size=max(1, round(cfg.intermediate_size * fraction)),
                               pruned_heads={}, intermediate_sizes=None, extra=dict(cfg.extra))


class _ProjectedEmbeddings(nn.Module):
    """The discriminator's embeddings, projected to the generator's width: (...) ids -> (..., h).

    Narrow ELECTRA embeddings (``embedding_size`` < hidden, projected after their LayerNorm) are shared up to that
    norm and the generator has its own projection from the embedding width, as in ELECTRA (each model its own
    ``embeddings_project``); otherwise the discriminator's whole embedding output (H wide) is projected.
    """

    def __init__(self, shared: Embeddings, width: int) -> None:
        super().__init__()
        self.shared = shared
        self.narrow = shared.project is not None and not shared.project_first
        in_width = shared.word.embedding_dim if self.narrow else shared.norm.normalized_shape[0]
        self.in_width = in_width
        # as ELECTRA's embeddings_project: only where the widths differ
        self.project = nn.Linear(in_width, width) if in_width != width else nn.Identity()

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        s = self.shared
        if not self.narrow:
            return self.project(s(input_ids, position_ids, token_type_ids))
        # Embeddings.forward up to (not through) the discriminator's projection
        h = s.word(input_ids)
        if s.token_type is not None:
            h = h + s.token_type(token_type_ids)
        if s.position is not None:
            h = h + s.position(position_ids + s.offset if s.offset else position_ids)
        return self.project(s.dropout(s.norm(h)))


class DiscriminatorHead(nn.Module):
    """h -> dense -> act -> Linear(hidden, 1): one logit per token, > 0 means 'replaced'."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.out = nn.Linear(cfg.hidden_size, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.act(self.dense(h))).squeeze(-1)  # (total_tokens,)

    def _named(self, table: dict[str, str]) -> dict[str, Tensor]:
        """HF name -> our tensor, through the family's table ({"discriminator_predictions.dense": "dense", ...})."""
        return {f"{hf}.{p}": t for hf, ours in table.items() for p, t in getattr(self, ours).named_parameters()}

    def own_state(self, table: dict[str, str]) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in self._named(table).items()}

    def load_own_state(self, heads: dict[str, Tensor], table: dict[str, str], source: str) -> None:
        with torch.no_grad():
            for hf, dst in self._named(table).items():
                src = heads.get(hf)
                if src is None:
                    raise CheckpointError(f"{source}: discriminator head tensor '{hf}' is missing")
                if tuple(src.shape) != tuple(dst.shape):
                    raise CheckpointError(f"{source}: tensor '{hf}' has shape {tuple(src.shape)}, "
                                          f"expected {tuple(dst.shape)}")
                dst.copy_(src)


def discriminator_head_table(cfg: EncoderConfig) -> dict[str, str] | None:
    """The family's ``ElectraForPreTraining`` head names ({HF prefix: our DiscriminatorHead part}), or None when the
    family has no such class (every family but ELECTRA)."""
    return family_of(cfg).extra_heads.get(PRETRAINING)


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


GENERATOR_DIR = "generator"


class Electra(nn.Module):
    def __init__(self, discriminator: BertModel, generator_fraction: float = 0.25, disc_weight: float = 50.0,
                 generator_cfg: EncoderConfig | None = None) -> None:
        """generator_cfg: the generator's shape (a loaded generator's); None: ``generator_fraction`` of the
        discriminator's."""
        super().__init__()
        cfg = discriminator.config
        self.discriminator = discriminator
        if discriminator.pooler is not None:
            discriminator.pooler.requires_grad_(False)
        gcfg = generator_cfg or generator_config(cfg, generator_fraction)
        self.generator = BertModel(gcfg, add_pooler=False, path=discriminator.path)
        self.generator.embeddings = _ProjectedEmbeddings(discriminator.embeddings, gcfg.hidden_size)
        self.generator.embeddings.project.apply(discriminator._init_weights)
        # the decoder is tied to the word embeddings, so it projects back to their width
        self.generator_head = MLMHead(gcfg.hidden_size, cfg.embedding_width, cfg.hidden_act, cfg.layer_norm_eps,
                                      discriminator.embeddings.word)
        self.generator_head.dense.apply(discriminator._init_weights)
        self.disc_head = DiscriminatorHead(cfg)
        self.disc_head.apply(discriminator._init_weights)
        self.disc_weight = disc_weight

    @property
    def config(self) -> EncoderConfig:
        return self.discriminator.config

    @classmethod
    def from_encoder(cls, discriminator: BertModel, heads: dict[str, Tensor], source: str,
                     generator_fraction: float = 0.25, disc_weight: float = 50.0,
                     generator: str | os.PathLike[str] | None = None) -> Electra:
        """ELECTRA around a loaded discriminator; its replaced-token head is taken from ``heads`` (a checkpoint's
        head tensors) when the family has one and the checkpoint holds it (``ElectraForPreTraining``), else new.

        generator: an ``ElectraForMaskedLM`` directory (``<discriminator>/generator`` as we save it, or a released
        ELECTRA generator) to continue with; None: a new generator of ``generator_fraction`` of the width."""
        gen = gen_heads = None
        if generator is not None:
            gen, gen_heads = load_pretrained(generator)
            if gen.config.model_type != "electra" or discriminator.config.model_type != "electra":
                raise CheckpointError(f"{generator}: a generator continues only an electra-family discriminator "
                                      f"(ElectraForMaskedLM + ElectraForPreTraining), got {gen.config.model_type} "
                                      f"and {discriminator.config.model_type}")
        model = cls(discriminator, generator_fraction, disc_weight,
                    None if gen is None else dataclasses.replace(gen.config, extra=dict(gen.config.extra)))
        table = discriminator_head_table(discriminator.config)
        if table and any(k.startswith(tuple(table)) for k in heads):
            model.disc_head.load_own_state(heads, table, source)
            log.info("%s: continuing with its discriminator head", source)
        else:
            log.info("%s has no discriminator head: created a new one", source)
        if gen is not None:
            model._take_generator(gen, gen_heads or {}, str(generator))
            log.info("%s: continuing with its generator (%d layers, hidden %d)", generator,
                     gen.config.num_hidden_layers, gen.config.hidden_size)
        else:
            log.info("the generator is new (%.2f of the discriminator's width)", generator_fraction)
        return model

    # ---- the generator in transformers' ElectraForMaskedLM layout --------------------------------------------
    def _generator_input_width(self) -> int:
        return self.generator.embeddings.in_width

    def generator_hf_config(self) -> EncoderConfig | None:
        """The generator as an ``electra`` config (its embedding tables are the discriminator's), or None when
        transformers cannot express it (not an electra family, or a head activation other than ELECTRA's gelu)."""
        gcfg = self.generator.config
        width = self._generator_input_width()
        if self.config.model_type != "electra" or gcfg.hidden_act != "gelu":
            return None
        return dataclasses.replace(gcfg, model_type="electra", embedding_size=None if width == gcfg.hidden_size
                                   else width, embedding_projection="after_norm", extra={})

    def generator_state_dict(self) -> dict[str, Tensor]:
        """The generator under ``ElectraForMaskedLM`` names (needs ``generator_hf_config()``)."""
        gcfg = self.generator_hf_config()
        assert gcfg is not None
        disc = hf_state_dict(self.discriminator)
        state = {f"electra.{k}": v for k, v in disc.items()
                 if k.startswith("embeddings.") and not k.startswith("embeddings_project")}
        ours = self.generator.state_dict()
        for hf_key, (our_key, rows) in hf_key_map(gcfg, False).items():
            if hf_key.startswith("encoder."):
                t = ours[our_key] if rows is None else ours[our_key][rows]
                state[f"electra.{hf_key}"] = t.detach().cpu().contiguous().clone()
        project = self.generator.embeddings.project
        if isinstance(project, nn.Linear):
            for p in ("weight", "bias"):
                state[f"electra.embeddings_project.{p}"] = getattr(project, p).detach().cpu().contiguous().clone()
        state.update(self.generator_head.own_state(FAMILIES["electra"].mlm))
        return state

    def _take_generator(self, gen: BertModel, heads: dict[str, Tensor], source: str) -> None:
        if gen.config.embedding_width != self._generator_input_width():
            raise CheckpointError(f"{source}: the generator reads {gen.config.embedding_width}-wide embeddings; this "
                                  f"discriminator's are {self._generator_input_width()} wide")
        own = self.discriminator.embeddings
        if not torch.equal(gen.embeddings.word.weight, own.word.weight):
            log.warning("%s: the generator's word embeddings differ from the discriminator's; ELECTRA shares them, "
                        "so the discriminator's are used", source)
        with torch.no_grad():
            self.generator.layers.load_state_dict(gen.layers.state_dict())
            if gen.embeddings.project is not None:
                self.generator.embeddings.project.load_state_dict(gen.embeddings.project.state_dict())
        self.generator_head.load_own_state(heads, source, FAMILIES["electra"].mlm)

    def hf_state_dict(self) -> dict[str, Tensor]:
        """The discriminator in the family's ``ElectraForPreTraining`` layout, or its base model's without one."""
        table = discriminator_head_table(self.config)
        if table is None:
            return hf_state_dict(self.discriminator)
        return {**prefixed_state_dict(self.discriminator), **self.disc_head.own_state(table)}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """config.json + model.safetensors of the discriminator (see the module docstring), and the generator in
        ``generator/`` where transformers can express it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        role = PRETRAINING if discriminator_head_table(cfg) else "encoder"
        gcfg = self.generator_hf_config()
        if gcfg is not None:
            (d / GENERATOR_DIR).mkdir(exist_ok=True)
            write_config(gcfg, d / GENERATOR_DIR, family_of(gcfg).architecture("electra", "mlm"))
            write_safetensors(self.generator_state_dict(), d / GENERATOR_DIR)
        write_config(cfg, d, family_of(cfg).architecture(cfg.model_type, role))
        write_safetensors(self.hf_state_dict(), d)
        return d

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
