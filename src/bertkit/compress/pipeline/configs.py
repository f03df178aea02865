"""The settings of the step kinds that have no config class of their own elsewhere (structured pruning,
dropping layers, low-rank, quantization), each checked on its own: a bad value is an error naming it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bertkit.compress import lowrank, quantize
from bertkit.errors import ConfigError

QUANTIZE_MODES = ("dynamic", "static", "weight_only")


# ---- the settings of the kinds that have no config of their own elsewhere ------------------------------------
@dataclass
class StructuredConfig:
    head_fraction: float = 0.0  # of all heads, least important first (every layer keeps one)
    neuron_fraction: float = 0.0  # of all FFN neurons
    target_speedup: float | None = None  # instead of fractions: prune until the engine measures this speedup
    speedup_step: float = 0.1  # fraction of the remaining heads and neurons pruned per measured step
    speedup_texts: int = 64  # eval-split texts timed per measured step
    multiple_of: int = 8  # FFN widths rounded down to a multiple (int8 GEMMs skip other sizes); 1: as pruned
    importance_batches: int = 8  # training batches the Taylor importance averages over
    batch_size: int = 16
    finetune_steps: int = 0  # a short fine-tune afterwards (0: none)
    lr: float = 5e-5

    def validate(self) -> None:
        fractions = self.head_fraction or self.neuron_fraction
        if self.target_speedup is not None and fractions:
            raise ConfigError("give target_speedup or head_fraction / neuron_fraction, not both")
        if self.target_speedup is None and not fractions:
            raise ConfigError("nothing to prune: give head_fraction and/or neuron_fraction, or target_speedup")
        for name in ("head_fraction", "neuron_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be in [0, 1)")
        checks = [("target_speedup", self.target_speedup is None or self.target_speedup > 1),
                  ("speedup_step", 0 < self.speedup_step < 1), ("speedup_texts", self.speedup_texts >= 1),
                  ("multiple_of", self.multiple_of >= 1),
                  ("importance_batches", self.importance_batches >= 1), ("batch_size", self.batch_size >= 1),
                  ("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0)]
        fail_bad(self, checks)


@dataclass
class DropLayersConfig:
    keep: list[int] = field(default_factory=list)  # layers kept (0-based, increasing), renumbered from 0
    finetune_steps: int = 0
    lr: float = 5e-5
    batch_size: int = 16

    def validate(self) -> None:
        if not self.keep:
            raise ConfigError("keep is empty: list the layers to keep, e.g. [0, 2, 4]")
        if self.keep != sorted(set(self.keep)) or self.keep[0] < 0:
            raise ConfigError(f"keep={self.keep}: layer ids must be >= 0 and increasing, each once")
        fail_bad(self, [("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0),
                         ("batch_size", self.batch_size >= 1)])


@dataclass
class LowRankConfig:
    layers: list[str] = field(default_factory=lambda: ["mlp_in", "mlp_out"])  # kinds or names (layers.3.mlp_in)
    energy: float = 0.9  # rank keeping this share of ||W||_F^2, where ranks gives none
    ranks: int | dict[str, int] | None = None
    finetune_steps: int = 0
    lr: float = 1e-4
    batch_size: int = 16
    only_factors: bool = False  # fine-tune the factors alone

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("layers is empty: name layer kinds (mlp_in, ...) or layers (layers.3.mlp_in)")
        for entry in self.layers:
            if not re.fullmatch(rf"(layers\.\d+\.)?({'|'.join(lowrank.LAYER_LINEARS)})", entry):
                raise ConfigError(f"layers: unknown layer {entry!r}; give one of {', '.join(lowrank.LAYER_LINEARS)} "
                                  "or a name like layers.3.mlp_in")
        ranks = self.ranks.values() if isinstance(self.ranks, dict) else [] if self.ranks is None else [self.ranks]
        fail_bad(self, [("energy", 0 < self.energy <= 1), ("ranks", all(r >= 1 for r in ranks)),
                         ("finetune_steps", self.finetune_steps >= 0), ("lr", self.lr > 0),
                         ("batch_size", self.batch_size >= 1)])


@dataclass
class QuantizeConfig:
    mode: str = "dynamic"  # dynamic | static (int8, activations too) | weight_only (int8 / int4 storage)
    bits: int = 8  # weight_only: 8 or 4; dynamic and static are int8
    group_size: int = 128  # weight_only (and embeddings): input columns per scale
    scale_dtype: str = "fp16"  # weight_only (and embeddings) scales
    embeddings: int | bool = False  # false, 8 or 4: the embedding tables too (quantize.quantize_embeddings)
    pooler: bool = False  # weight_only: the pooler too (the classifier always stays float)

    def validate(self) -> None:
        if self.mode not in QUANTIZE_MODES:
            raise ConfigError(f"mode={self.mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
        if self.bits not in quantize.BITS:
            raise ConfigError(f"bits={self.bits}: must be 8 or 4")
        if self.mode != "weight_only" and self.bits != 8:
            raise ConfigError(f"bits={self.bits}: {self.mode} quantization is int8; int4 is mode: weight_only")
        if self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size}: must be >= 1")
        if self.scale_dtype not in ("fp16", "fp32"):
            raise ConfigError(f"scale_dtype={self.scale_dtype!r}: fp16 or fp32")
        if self.embeddings is True or self.embeddings not in (False, 8, 4):
            raise ConfigError(f"embeddings={self.embeddings!r}: false, 8 or 4 (bits)")
        if self.embeddings and not hasattr(quantize, "quantize_embeddings"):
            raise ConfigError("embeddings: embedding quantization is not supported yet (this bertkit has no "
                              "quantize.quantize_embeddings); remove embeddings or set it to false")

    @property
    def what(self) -> str:
        return f"int{self.bits}"


def fail_bad(cfg: Any, checks: list[tuple[str, bool]]) -> None:
    bad = [name for name, ok in checks if not ok]
    if bad:
        raise ConfigError("invalid setting(s): " + ", ".join(f"{n}={getattr(cfg, n)!r}" for n in bad))
