"""Pretraining: corpus -> token cache -> packed, masked sequences -> MLM or ELECTRA -> an encoder on disk.

The output directory holds:
  config.json, model.safetensors, tokenizer files   the model in its family's layout: ``XxxForMaskedLM`` for MLM
                                                     (BertForMaskedLM, RobertaForMaskedLM, DebertaV2ForMaskedLM ...);
                                                     for ELECTRA the discriminator, as ``ElectraForPreTraining``
                                                     (with its replaced-token head) for the electra family and as
                                                     the plain base model (BertModel ...) for the others
  checkpoints/step-*.pt                              the last K training checkpoints (resume)
  metrics.jsonl, training_curve.png                  train loss, held-out loss and masked-token accuracy
  pretrain_config.json, results.json                 what was asked, what came out

The model: ``init_from`` continues any checkpoint ``bertkit.model.directory.load_encoder`` reads (every family, HF
or sentence-transformers or bertkit layout), with its tokenizer and its MLM head (a new head in the family's layout
when it has none); or the recipe's ``model`` section builds a new one of ``model.family`` (bert, roberta,
deberta-v2, modernbert, electra, distilbert, mpnet; see ``new_encoder_config``). Sequences are never longer than
the model takes (``EncoderConfig.max_tokens``: RoBERTa and MPNet lose positions to their offset), and token types
reach only the families that have them.

Batches: ``global_batch_size`` sequences per optimizer step, split over ranks (torchrun) and then into
micro-batches of ``training.batch_size``; ``grad_accum`` follows from the three. Every sequence is masked
by its own seeded draws (see ``data/masking.py``), so the run is the same on 1 rank or N.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.batch import DeviceBatch
from bertkit.data.corpus import PackedSequences, build_token_cache, epoch_order, shard_batches
from bertkit.data.masking import MaskingConfig, VocabInfo, mask_sequences
from bertkit.data.tokenizer import Tokenizer
from bertkit.data.wordpiece import train_wordpiece
from bertkit.errors import BertkitError, ConfigError
from bertkit.hub import resolve_model_dir
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.electra import GENERATOR_DIR, Electra
from bertkit.model.families import FAMILIES, config_from_hf, describe_architecture, family_of, hf_config
from bertkit.model.heads import strip_task_keys
from bertkit.model.mlm import MaskedLM
from bertkit.train.distributed import DistInfo, init_distributed, rank_share
from bertkit.train.finetune import prepare_output_dir
from bertkit.train.trainer import CURVE_FILE, METRICS_FILE, TrainConfig, Trainer, TrainState
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.recipes import config_from_dict, read_settings
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

OBJECTIVES = ("mlm", "electra")
CONFIG_FILE = "pretrain_config.json"
RESULTS_FILE = "results.json"
EVAL_EPOCH = 2**31 - 1  # the masking key of held-out sequences: fixed, never a training epoch
OUTPUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json", METRICS_FILE, CURVE_FILE, CONFIG_FILE, RESULTS_FILE)


@dataclass
class PretrainConfig:
    objective: str = "mlm"  # mlm | electra
    model: dict[str, Any] = field(default_factory=dict)  # a new model: family + its config.json settings
    init_from: str | None = None  # continue pretraining this model (built-in name or directory) instead
    freeze_encoder: bool = False  # train the MLM head only: a probe of what the encoder already knows
    tokenizer: str | None = None  # a tokenizer directory or model name; None: init_from's, or train one
    vocab_size: int = 8192  # of the tokenizer trained when none is given (rounded up to a multiple of 64)
    lowercase: bool = True
    corpus: list[str] = field(default_factory=lambda: ["python-docs"])
    cache_dir: str | None = None  # token cache; None: ~/.cache/bertkit/tokens/<corpus+tokenizer hash>
    max_length: int = 128
    mlm_rate: float = 0.3  # MosaicBERT: 30% beats BERT's 15%
    whole_word_mask: bool = False
    generator_fraction: float = 0.25  # electra: generator width / discriminator width
    generator_from: str | None = None  # electra: an ElectraForMaskedLM to continue with; None: init_from/generator
    disc_weight: float = 50.0  # electra: weight of the discriminator loss
    global_batch_size: int = 64  # sequences per optimizer step, all ranks and micro-batches together
    eval_sequences: int = 256  # held out from the corpus for evaluation
    training: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1.0, lr=5e-4, warmup_ratio=0.06, weight_decay=0.01, eval_every=500))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """From a plain mapping (a YAML recipe with overrides); unknown keys and wrong types name the key. The
        ``training`` block sits on top of the pretraining defaults above (``utils/recipes.config_from_dict``)."""
        cfg = config_from_dict(cls, d)
        cfg.validate()
        return cfg

    @classmethod
    def from_recipe(cls, name_or_file: str, overrides: Sequence[str] = ()) -> PretrainConfig:
        """``PretrainConfig.from_recipe("tiny-cpu", ["training.lr=1e-4"])``: a recipe name or YAML file."""
        return cls.from_dict(read_settings(cls, name_or_file, overrides))

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"setting objective is {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.init_from and self.model:
            raise ConfigError("give either model (a new encoder's config) or init_from (continue one), not both")
        if not self.corpus:
            raise ConfigError("setting corpus is empty: name at least one file, folder or built-in corpus")
        MaskingConfig(rate=self.mlm_rate).validate()
        if self.max_length < 8:
            raise ConfigError(f"setting max_length must be >= 8, got {self.max_length}")
        if self.global_batch_size < 1:
            raise ConfigError(f"setting global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.model:  # checked now, with a stand-in vocabulary: the tokenizer's is known only when the run starts
            vocab = self.model.get("vocab_size")
            check_length(self, new_encoder_config(self.model, vocab if isinstance(vocab, int) and vocab > 0 else 30522,
                                                  self.model.get("pad_token_id", 0), self.max_length))
        self.training.validate()


# A new model of each family starts from its transformers config class's defaults plus these: the options of the
# family's reference checkpoint (roberta-base, deberta-v3-base, all-mpnet-base-v2 ...) where the class's defaults
# differ. ModernBertConfig, ElectraConfig and DistilBertConfig default to ModernBERT-base,
# electra-small-discriminator and distilbert-base already. The recipe gives the sizes.
NEW_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {},
    "roberta": {"type_vocab_size": 1, "layer_norm_eps": 1e-5},
    "deberta-v2": {"relative_attention": True, "position_buckets": 256, "max_relative_positions": -1,
                   "pos_att_type": ["p2c", "c2p"], "share_att_key": True, "norm_rel_ebd": "layer_norm",
                   "position_biased_input": False, "type_vocab_size": 0},
    "modernbert": {},
    "electra": {},
    "distilbert": {},
    "mpnet": {"layer_norm_eps": 1e-5},
}
DEFAULT_MAX_POSITIONS = 512  # a new model's max_position_embeddings when the recipe gives none (or max_length)


def family_settings(family_name: str) -> list[str]:
    """The ``model`` settings a family takes: the keys of its config.json that bertkit reads."""
    family = FAMILIES[family_name]
    if family_name == "bert":  # BERT's config is ours: every EncoderConfig field
        keys = {f.name for f in dataclasses.fields(EncoderConfig)} - {"extra", "pruned_heads", "intermediate_sizes"}
    else:
        keys = family.from_hf({"model_type": family.model_types[0]})[1]
    return sorted(keys - {"model_type"})


def new_encoder_config(model: dict[str, Any], vocab_size: int, pad_token_id: int, max_length: int) -> EncoderConfig:
    """The config of a new encoder from a recipe's ``model`` section.

    ``model.family`` (default bert) picks the family, ``model.model_type`` one of its model types (xlm-roberta ...);
    every other key is a setting of the family's own config.json (``hidden_size``, ``num_hidden_layers``, and the
    family's options: DeBERTa's ``position_buckets``, ModernBERT's ``global_attn_every_n_layers`` ...; BERT takes
    every bertkit option too, e.g. ``ffn_type: glu``, ``position_embedding_type: alibi``), on top of the family's
    defaults (``NEW_MODEL_DEFAULTS``). ``vocab_size`` and ``pad_token_id`` are the tokenizer's; a larger
    ``vocab_size`` may be given. ``max_position_embeddings`` defaults to room for ``max(max_length, 512)`` tokens
    after the family's position offset. A key the family does not have, a value it cannot take or a combination its
    transformers class cannot express is a ConfigError naming the setting.
    """
    if not isinstance(model, dict):
        raise ConfigError(f"setting model must be a mapping of settings, got {type(model).__name__}")
    fields = dict(model)
    name = fields.pop("family", "bert")
    if name not in FAMILIES:
        raise ConfigError(f"setting model.family is {name!r}; choose one of {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    model_type = fields.pop("model_type", family.model_types[0])
    if model_type not in family.model_types:
        raise ConfigError(f"setting model.model_type is {model_type!r}; family {name} has "
                          f"{', '.join(family.model_types)}")
    known = family_settings(name)
    unknown = sorted(k for k in fields if k not in known)
    if unknown:
        raise ConfigError(f"setting model.{unknown[0]} is not a setting of family {name}; its settings: "
                          f"{', '.join(known)}")
    given_vocab = fields.get("vocab_size", vocab_size)
    if isinstance(given_vocab, int) and given_vocab < vocab_size:
        raise ConfigError(f"setting model.vocab_size is {given_vocab} but the tokenizer has {vocab_size} tokens; "
                          "the embedding table needs a row for each (leave vocab_size out to take the tokenizer's)")
    if fields.get("pad_token_id", pad_token_id) != pad_token_id:
        raise ConfigError(f"setting model.pad_token_id is {fields['pad_token_id']!r} but the tokenizer's padding "
                          f"token has id {pad_token_id}; leave it out to take the tokenizer's")
    d = {**NEW_MODEL_DEFAULTS[name], **fields, "model_type": model_type, "vocab_size": given_vocab,
         "pad_token_id": pad_token_id}

    def translate(d: dict[str, Any]) -> EncoderConfig:
        try:
            cfg = config_from_hf(d, source="setting model")
            hf_config(cfg)  # refuses what the family's transformers class cannot express
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith("setting model") else f"setting model: {e}") from None
        return cfg

    cfg = translate(d)
    if "max_position_embeddings" not in fields:  # room for the longest sequence after the position offset
        cfg = translate({**d, "max_position_embeddings": max(max_length, DEFAULT_MAX_POSITIONS)
                         + cfg.position_offset})
    return cfg


@dataclass
class MLMBatch(DeviceBatch):
    """Packed fixed-length sequences with their masks: every tensor is flat over (n * seq) tokens."""

    input_ids: Tensor  # (total_tokens,) with [MASK]/random/kept tokens at the chosen positions
    packing: Packing
    positions: Tensor  # (n_masked,) flat indices of the chosen tokens
    targets: Tensor  # (n_masked,) their original ids
    num_tokens: int
    num_units: int  # masked tokens: what the MLM loss averages over


class MaskedBatches(Sequence):
    """One epoch's micro-batches for this rank, masked when taken (so an epoch costs no memory up front)."""

    def __init__(self, seqs: PackedSequences, steps: list[np.ndarray], micro: int, seed: int, epoch: int,
                 vocab: VocabInfo, masking: MaskingConfig) -> None:
        self.seqs, self.seed, self.epoch, self.vocab, self.masking = seqs, seed, epoch, vocab, masking
        # each step's rows split into micro-batches in order
        self.items = [rows[i:i + micro] for rows in steps for i in range(0, len(rows), micro)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # int -> MLMBatch; slice -> list[MLMBatch]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return make_batch(self.seqs, self.items[i], self.seed, self.epoch, self.vocab, self.masking)


def make_batch(seqs: PackedSequences, rows: np.ndarray, seed: int, epoch: int, vocab: VocabInfo,
               masking: MaskingConfig) -> MLMBatch:
    ids = seqs.take(rows)  # (n, seq)
    m = mask_sequences(ids, rows, seed, epoch, vocab, masking)
    n, s = ids.shape
    return MLMBatch(torch.from_numpy(m.input_ids.reshape(-1)), Packing.from_lengths([s] * n),
                    torch.from_numpy(m.positions), torch.from_numpy(m.targets), n * s, len(m.positions))


def mlm_loss(model: nn.Module, b: MLMBatch) -> Tensor:
    return model(b.input_ids, b.packing, b.positions, b.targets)


def electra_loss(model: nn.Module, b: MLMBatch) -> Tensor:
    return model(b.input_ids, b.packing, b.positions, b.targets).loss


@torch.no_grad()
def evaluate_mlm(model: nn.Module, batches: list[MLMBatch], device: torch.device) -> dict[str, float]:
    """Held-out masked-token loss and accuracy (and the discriminator's, for ELECTRA), token-weighted."""
    sums = dict.fromkeys(("loss", "mlm_loss", "mlm_correct", "disc_loss", "disc_correct", "tokens", "units"), 0.0)
    for b in batches:
        b = b.to(device)
        if isinstance(model, Electra):
            out = model(b.input_ids, b.packing, b.positions, b.targets)
            sums["mlm_loss"] += out.generator_loss.item() * b.num_units
            sums["mlm_correct"] += out.generator_correct
            sums["disc_loss"] += out.discriminator_loss.item() * b.num_tokens
            sums["disc_correct"] += out.disc_correct
        else:
            logits = model(b.input_ids, b.packing, b.positions).float()
            sums["mlm_loss"] += F.cross_entropy(logits, b.targets, reduction="sum").item()
            sums["mlm_correct"] += int((logits.argmax(-1) == b.targets).sum())
        sums["tokens"] += b.num_tokens
        sums["units"] += b.num_units
    out = {"mlm_loss": sums["mlm_loss"] / sums["units"], "mlm_accuracy": sums["mlm_correct"] / sums["units"]}
    if isinstance(model, Electra):
        out["disc_loss"] = sums["disc_loss"] / sums["tokens"]
        out["disc_accuracy"] = sums["disc_correct"] / sums["tokens"]
        out["loss"] = out["mlm_loss"] + model.disc_weight * out["disc_loss"]
    else:
        out["loss"] = out["mlm_loss"]
    return out


def default_cache_dir(corpus: list[str], tokenizer: Tokenizer) -> Path:
    key = hashlib.sha256(json.dumps([corpus, tokenizer.fingerprint()]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit"))
    return root / "tokens" / key


def prepare_tokenizer(cfg: PretrainConfig, out: Path, dist: DistInfo) -> Tokenizer:
    """The configured tokenizer, init_from's, or one trained on the corpus (rank 0 trains; others wait)."""
    if cfg.tokenizer:
        return Tokenizer.from_dir(resolve_model_dir(cfg.tokenizer))
    if cfg.init_from:  # a sentence-transformers directory keeps it with the Transformer module's files
        return Tokenizer.from_dir(inspect_model_dir(cfg.init_from).weights_dir)
    if dist.is_main and not (out / "tokenizer.json").is_file():
        train_wordpiece(cfg.corpus, cfg.vocab_size, out, lowercase=cfg.lowercase)
    dist.barrier()
    return Tokenizer.from_dir(out)


def build_model(cfg: PretrainConfig, tok: Tokenizer) -> tuple[nn.Module, BertModel]:
    """(the module trained, the encoder inside it): init_from's encoder (and heads), or a new one of model.family."""
    if cfg.init_from:
        encoder, heads, info = load_encoder(cfg.init_from, who="continued pretraining (init_from)")
        strip_task_keys(encoder.config)
        if tok.vocab_size > encoder.config.vocab_size:
            raise ConfigError(f"init_from {cfg.init_from}: the tokenizer has {tok.vocab_size} tokens but the model's "
                              f"embedding table only {encoder.config.vocab_size} rows (vocab_size)")
        source = str(info.path)
        if cfg.objective == "mlm":
            return MaskedLM.from_encoder(encoder, heads, source), encoder
        generator = cfg.generator_from
        if generator is None and (info.path / GENERATOR_DIR / "config.json").is_file():
            generator = str(info.path / GENERATOR_DIR)  # saved beside the discriminator by an earlier run
        return Electra.from_encoder(encoder, heads, source, cfg.generator_fraction, cfg.disc_weight,
                                    generator), encoder
    ecfg = new_encoder_config(cfg.model, tok.vocab_size, tok.pad_id, cfg.max_length)
    encoder = BertModel(ecfg, add_pooler=False)
    if cfg.objective == "mlm":
        return MaskedLM(encoder), encoder
    return Electra(encoder, cfg.generator_fraction, cfg.disc_weight), encoder


def check_length(cfg: PretrainConfig, ecfg: EncoderConfig) -> None:
    """Packed rows are ``max_length`` tokens: no more than the model has positions for."""
    if cfg.max_length > ecfg.max_tokens:
        offset = f" - position offset {ecfg.position_offset}" if ecfg.position_offset else ""
        raise ConfigError(f"setting max_length is {cfg.max_length} but {cfg.init_from or 'the model'} takes at most "
                          f"{ecfg.max_tokens} tokens (max_position_embeddings {ecfg.max_position_embeddings}"
                          f"{offset}); lower max_length")


def save_model(model: nn.Module, tok: Tokenizer, out: Path) -> None:
    """The family's layout: ``XxxForMaskedLM`` for MLM; for ELECTRA the discriminator (see ``model/electra.py``)."""
    model.save_pretrained(out)
    tok.save(out)


@dataclass
class PretrainResult:
    output_dir: Path
    state: TrainState
    eval: dict[str, float]
    model: nn.Module


def pretrain(output_dir: str | os.PathLike[str], config: PretrainConfig, *, resume: bool = False,
             overwrite: bool = False, callbacks: tuple = ()) -> PretrainResult:
    """Pretrain (or continue pretraining) an encoder; runs alone or under torchrun, the same way."""
    cfg = config
    cfg.validate()
    out = Path(output_dir)
    dist = init_distributed(cfg.training.device)
    tcfg = cfg.training
    per_rank = rank_share(cfg.global_batch_size, dist.world_size, "global_batch_size")
    micro = min(tcfg.batch_size, per_rank)
    if per_rank % micro:
        raise ConfigError(f"global_batch_size {cfg.global_batch_size} must split into {dist.world_size} rank(s) x "
                          f"whole micro-batches of training.batch_size {tcfg.batch_size}")
    tcfg = dataclasses.replace(tcfg, batch_size=micro, grad_accum=per_rank // micro, device=str(dist.device),
                               metric=tcfg.metric or ("disc_accuracy" if cfg.objective == "electra"
                                                      else "mlm_accuracy"))
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite, OUTPUT_FILES)
        if overwrite and not resume:  # an earlier ELECTRA run's generator
            shutil.rmtree(out / GENERATOR_DIR, ignore_errors=True)
    dist.barrier()
    if dist.device.type == "cpu":
        tune_allocator()

    tok = prepare_tokenizer(cfg, out, dist)
    torch.manual_seed(tcfg.seed)  # a new model's initial weights: the same on every rank
    model, encoder = build_model(cfg, tok)  # before the corpus is read: a bad model setting fails in seconds
    check_length(cfg, encoder.config)
    if cfg.freeze_encoder:
        if cfg.objective != "mlm":
            raise ConfigError("freeze_encoder applies to objective mlm only")
        encoder.requires_grad_(False)  # the decoder stays tied to the (frozen) word embeddings
        log.info("encoder frozen: training the MLM head's transform and bias only")
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.corpus, tok)
    if dist.is_main:  # rank 0 builds the cache; the others open the finished one
        cache = build_token_cache(cfg.corpus, tok, cache_dir)
    dist.barrier()
    if not dist.is_main:
        cache = build_token_cache(cfg.corpus, tok, cache_dir)
    seqs = PackedSequences(cache, cfg.max_length, tok.cls_id, tok.sep_id)
    if len(seqs) <= cfg.eval_sequences + cfg.global_batch_size - 1:
        raise BertkitError(f"corpus {', '.join(cfg.corpus)} packs into {len(seqs)} sequences of {cfg.max_length}: "
                           f"too few for {cfg.eval_sequences} held-out sequences plus one global batch of "
                           f"{cfg.global_batch_size}; lower eval_sequences/global_batch_size or add text")
    train_rows, eval_rows = seqs.split(eval_sequences=cfg.eval_sequences, seed=tcfg.seed)
    vocab = VocabInfo.from_tokenizer(tok)
    masking = MaskingConfig(rate=cfg.mlm_rate, whole_word=cfg.whole_word_mask)
    eval_batches = [make_batch(seqs, eval_rows[i:i + micro], tcfg.seed, EVAL_EPOCH, vocab, masking)
                    for i in range(0, len(eval_rows), micro)]

    def batches(epoch: int) -> MaskedBatches:
        order = train_rows[epoch_order(len(train_rows), tcfg.seed, epoch)]
        steps = shard_batches(order, cfg.global_batch_size, dist.rank, dist.world_size)
        return MaskedBatches(seqs, steps, micro, tcfg.seed, epoch, vocab, masking)

    if dist.is_main:
        atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
    log.info("pretraining (%s) a %d-layer, %d-wide %s (%.1fM parameters) on %s: %d train / %d held-out "
             "sequences of %d tokens, global batch %d = %d rank(s) x %d micro-batches x %d", cfg.objective,
             encoder.config.num_hidden_layers, encoder.config.hidden_size, describe_architecture(encoder.config),
             encoder.num_parameters() / 1e6,
             ", ".join(cfg.corpus), len(train_rows), len(eval_rows), cfg.max_length, cfg.global_batch_size,
             dist.world_size, tcfg.grad_accum, micro)
    fingerprint = {"objective": cfg.objective, "corpus": cfg.corpus, "tokenizer": tok.fingerprint(),
                   "max_length": cfg.max_length, "mlm_rate": cfg.mlm_rate, "whole_word_mask": cfg.whole_word_mask,
                   "global_batch_size": cfg.global_batch_size, "world_size": dist.world_size,
                   "encoder": encoder.config.to_dict(), "init_from": cfg.init_from}
    trainer = Trainer(model, tcfg, batches=batches, loss_fn=mlm_loss if cfg.objective == "mlm" else electra_loss,
                      output_dir=out, evaluate=lambda m: evaluate_mlm(m, eval_batches, trainer.device),
                      fingerprint=fingerprint, callbacks=callbacks)
    at_start = None
    if not resume:  # held-out numbers of the starting point (with an untrained head, if it was created)
        model.eval()
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.autocast_dtype is not None):
            at_start = evaluate_mlm(model, eval_batches, trainer.device)
        model.train()
        log.info("held-out at step 0: %s", ", ".join(f"{k}={v:.4f}" for k, v in at_start.items()))
    t0 = time.perf_counter()
    state = trainer.fit(resume=resume)
    final = state.history[-1] if state.history else {}
    if dist.is_main:
        save_model(model, tok, out)
        results = {"objective": cfg.objective, "family": family_of(encoder.config).name,
                   "architecture": json.loads((out / "config.json").read_text())["architectures"][0],
                   "stopped": state.stopped, "steps": state.step,
                   "train_seconds": round(state.elapsed, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
                   "train_tokens": state.tokens,
                   "train_tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
                   "world_size": dist.world_size, "global_batch_size": cfg.global_batch_size,
                   "eval_at_start": at_start, "eval": {k: v for k, v in final.items() if k not in ("kind",)}}
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return PretrainResult(out, state, final, model)
