"""The pieces every fine-tuning run shares, whatever its task (``train.finetune`` for the five sequence and token
tasks, ``train.finetune_qa`` for question answering): the output directory's files, how it is prepared, the
stability options, and what a run returns."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from bertkit.errors import BertkitError
from bertkit.model.bert import BertModel
from bertkit.train.checkpoint import checkpoint_dir
from bertkit.train.trainer import CURVE_FILE, METRICS_FILE, TrainState

log = logging.getLogger("bertkit")

CONFIG_FILE = "finetune_config.json"
RESULTS_FILE = "results.json"
OUR_FILES = ("config.json", "model.safetensors", "bertkit_task.json", METRICS_FILE, CURVE_FILE, CONFIG_FILE,
              RESULTS_FILE)


@dataclass
class FinetuneResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None
    test: dict[str, float] | None
    model: Any  # the TaskModel (a QAModel for question answering)
    # multilabel: which thresholds, and F1 with fixed vs tuned (keyword-only: subclasses add positional fields)
    thresholds: dict[str, Any] | None = field(default=None, kw_only=True)


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool, ours: tuple[str, ...] = OUR_FILES) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise BertkitError(f"--output {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (resume or overwrite):
        raise BertkitError(f"--output {output_dir} exists and is not empty; pass --resume to continue the run "
                           "in it or --overwrite to start over")
    if overwrite and not resume and output_dir.is_dir():
        # Only what a run writes: never wipe a directory the user pointed at by mistake.
        shutil.rmtree(checkpoint_dir(output_dir), ignore_errors=True)
        for name in ours:
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def apply_stability_options(encoder: BertModel, cfg: Any) -> None:
    """cfg: a FinetuneConfig (its reinit_layers, freeze_layers, freeze_embeddings)."""
    n = len(encoder.layers)
    for name, k in (("reinit_layers", cfg.reinit_layers), ("freeze_layers", cfg.freeze_layers)):
        if not 0 <= k <= n:
            raise ValueError(f"{name}={k}: the model has {n} layers")
    if cfg.reinit_layers:
        for layer in encoder.layers[n - cfg.reinit_layers:]:
            layer.apply(encoder._init_weights)
        if encoder.pooler is not None:
            encoder.pooler.apply(encoder._init_weights)
        log.info("re-initialised the top %d layers and the pooler", cfg.reinit_layers)
    frozen = ([encoder.embeddings] if cfg.freeze_embeddings else []) + list(encoder.layers[:cfg.freeze_layers])
    for module in frozen:
        module.requires_grad_(False)
    if frozen:
        log.info("froze %s%d bottom layers", "the embeddings and " if cfg.freeze_embeddings else "",
                 cfg.freeze_layers)


def pooler_unused(head: nn.Module) -> bool:
    """Whether the head's encoder has a pooler the head never reads (token tasks; families whose sequence head has
    its own dense): it gets no gradient, so DDP must be told to look for unused parameters."""
    return head.encoder.pooler is not None and not head.spec.uses_pooler
