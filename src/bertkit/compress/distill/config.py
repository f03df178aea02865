"""What a distillation run is told: ``DistillConfig`` (task distillation), ``GeneralDistillConfig`` (raw
text), the checks they share, and the files a run writes.

The student comes from exactly one of ``student_layers`` (teacher layers kept), ``student_config`` (a narrower
encoder, fresh weights) or ``student_model`` (an encoder directory, task distillation only); a loss weight of 0
skips its loss (see ``losses.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bertkit.compress.distill.losses import normalize_weights
from bertkit.data.tokenizer import TOKENIZER_FILES
from bertkit.errors import ConfigError
from bertkit.hub import DEFAULT_MODEL
from bertkit.train.finetune import DataConfig
from bertkit.train.trainer import CURVE_FILE, METRICS_FILE, TrainConfig, config_from_dict

ATTN_LAYERS = ("last", "mapped")
LOSSES = ("kl", "ce", "hidden", "attn", "value")
CONFIG_FILE = "distill_config.json"
GENERAL_CONFIG_FILE = "distill_general_config.json"
RESULTS_FILE = "results.json"
OUTPUT_FILES = ("config.json", "model.safetensors", "bertkit_task.json", METRICS_FILE, CURVE_FILE, CONFIG_FILE,
                RESULTS_FILE)
GENERAL_OUTPUT_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES, METRICS_FILE, CURVE_FILE,
                        GENERAL_CONFIG_FILE, RESULTS_FILE)


def check_student_source(cfg: Any) -> None:
    """Exactly one of the student settings ``cfg`` has must be given."""
    names = [n for n in ("student_layers", "student_config", "student_model") if hasattr(cfg, n)]
    given = [n for n in names if getattr(cfg, n)]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {', '.join(names)}" + (f" (got {', '.join(given)})" if given else ""))


def check_losses(cfg: Any) -> None:
    """Temperature > 0, loss weights >= 0 with one that distills, a known ``attn_layers``, ``relation_heads`` >= 1."""
    if getattr(cfg, "temperature", 1.0) <= 0:
        raise ConfigError(f"temperature must be > 0, got {cfg.temperature}")
    alphas = {k: getattr(cfg, f"alpha_{k}") for k in LOSSES if hasattr(cfg, f"alpha_{k}")}
    bad = [f"alpha_{k}={v}" for k, v in alphas.items() if v < 0]
    if bad:
        raise ConfigError(f"loss weights must be >= 0: {', '.join(bad)}")
    if not any(v for k, v in alphas.items() if k != "ce"):
        raise ConfigError("nothing to distill: set alpha_kl, alpha_hidden, alpha_attn or alpha_value > 0")
    if cfg.attn_layers not in ATTN_LAYERS:
        raise ConfigError(f"attn_layers is {cfg.attn_layers!r}; choose one of {', '.join(ATTN_LAYERS)}")
    if cfg.relation_heads is not None and cfg.relation_heads < 1:
        raise ConfigError(f"relation_heads must be >= 1, got {cfg.relation_heads}")


@dataclass
class DistillConfig(DataConfig):  # data: as for fine-tuning (the task is the teachers')
    teachers: list[str] = field(default_factory=list)  # fine-tuned task model directories, same labels
    teacher_weights: list[float] | None = None  # soft-label weight of each teacher (normalized); None: equal
    # the student, exactly one of:
    student_layers: list[int] | None = None  # keep these layers (0-based) of the first teacher
    student_config: dict[str, Any] = field(default_factory=dict)  # the first teacher's config with these changes
    student_model: str | None = None  # an encoder (name or directory), e.g. a distill_general output
    # losses
    temperature: float = 2.0
    alpha_kl: float = 0.5
    alpha_ce: float = 0.5
    alpha_hidden: float = 0.0
    alpha_attn: float = 0.0
    alpha_value: float = 0.0
    layer_map: list[int] | None = None  # teacher layer (0-based) per student layer; None: student_layers or uniform
    attn_layers: str = "last"  # last | mapped: which layer pairs the attention and value losses compare
    relation_heads: int | None = None  # None: the real heads if the counts match, else the student's count
    training: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """From a plain mapping (a YAML recipe or kwargs); training keys may be flat or under ``training``."""
        cfg = config_from_dict(cls, d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.teachers:
            raise ConfigError("no teacher: give --teacher DIR (a fine-tuned task model directory)")
        normalize_weights(self.teacher_weights, len(self.teachers))
        check_student_source(self)
        check_losses(self)
        self.training.validate()


@dataclass
class GeneralDistillConfig:
    teacher: str = DEFAULT_MODEL  # an encoder: built-in name or directory
    student_layers: list[int] | None = None  # exactly one of these two
    student_config: dict[str, Any] = field(default_factory=dict)
    corpus: list[str] = field(default_factory=lambda: ["python-docs"])  # as pretraining: files, folders, built-ins
    cache_dir: str | None = None  # token cache; None: the one pretraining uses for this corpus and tokenizer
    max_length: int = 128
    eval_sequences: int = 64  # held-out rows: the eval loss picks the best student
    alpha_hidden: float = 0.0
    alpha_attn: float = 1.0  # MiniLM: last-layer attention and value relations
    alpha_value: float = 1.0
    layer_map: list[int] | None = None
    attn_layers: str = "last"
    relation_heads: int | None = None
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, lr=3e-4, warmup_ratio=0.06))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneralDistillConfig:
        cfg = config_from_dict(cls, d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        check_student_source(self)
        check_losses(self)
        if not self.corpus:
            raise ConfigError("setting corpus is empty: name at least one file, folder or built-in corpus")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        self.training.validate()
