"""Gradual pruning while fine-tuning, on the one training ``Trainer``.

The cubic schedule of Zhu & Gupta (2017) s_t = s_f + (s_i - s_f)(1 - (t - t0) / n)³, pruning every ``prune_every``
optimizer steps from ``start_step`` to ``end_step`` (by magnitude or oBERT) while fine-tuning in between, with the
masks fixed after the last pruning step. The pruner is a per-step callback (``GradualPruner``), and the masks
hook the optimizer's step.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bertkit.compress.sparse.masks import Masks, check_blocks, check_sparsity
from bertkit.compress.sparse.obert import LossFn, obert_masks
from bertkit.compress.sparse.selection import magnitude_masks
from bertkit.errors import BertkitError, ConfigError

if TYPE_CHECKING:
    from bertkit.data.features import Features
    from bertkit.task_model import TaskModel
    from bertkit.train.trainer import Trainer, TrainState


log = logging.getLogger("bertkit")

METHODS = ("magnitude", "obert")


def cubic_schedule(step: int, start_step: int, end_step: int, initial_sparsity: float,
                   final_sparsity: float) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - (t - t0) / n)³, n = end - start; s_i before t0, s_f after."""
    if end_step < start_step:
        raise ValueError(f"end_step={end_step} is before start_step={start_step}")
    if step >= end_step:
        return final_sparsity
    if step <= start_step:
        return initial_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** 3


@dataclass
class SparsityConfig:
    method: str = "magnitude"  # magnitude | obert
    sparsity: float = 0.8  # target share of pruned encoder-layer weights, in [0, 1)
    initial_sparsity: float = 0.0  # at start_step (the cubic schedule's s_i)
    block_size: int = 1  # B: consecutive weights of a row pruned together
    fisher_block: int | None = None  # obert: C, weights per Fisher block (None: max(8, block_size))
    steps: int = 1000  # optimizer steps in all
    start_step: int = 0  # first pruning step
    end_step: int | None = None  # last pruning step; None: 3/4 of steps (the last quarter recovers at s_f)
    prune_every: int = 100  # optimizer steps between pruning steps
    lr: float = 3e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # lr schedule: linear | cosine | constant
    fisher_grads: int = 64  # obert: m, gradients per Fisher estimate
    fisher_batch_size: int = 8  # obert: examples per Fisher gradient (1: per-sample gradients)
    damp: float = 1e-7  # obert: λ relative to the mean Fisher diagonal
    eval_every: int | None = None  # optimizer steps; None: at each epoch end
    seed: int = 42
    device: str | None = None
    progress: bool = False

    @property
    def fisher_block_size(self) -> int | None:
        """C for obert (None: max(8, block_size)); None for magnitude, which has no Fisher."""
        if self.method != "obert":
            return None
        return max(8, self.block_size) if self.fisher_block is None else self.fisher_block

    @property
    def last_step(self) -> int:
        return self.end_step if self.end_step is not None else max(self.start_step, (3 * self.steps) // 4)

    def pruning_steps(self) -> list[int]:
        """Steps (optimizer steps done) after which the model is pruned: start, start + every, ..., end."""
        return sorted(set(range(self.start_step, self.last_step, self.prune_every)) | {self.last_step})

    def validate(self) -> None:
        check_sparsity(self.sparsity)
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        if not (isinstance(self.initial_sparsity, int | float) and 0 <= self.initial_sparsity <= self.sparsity):
            raise ConfigError(f"initial_sparsity={self.initial_sparsity!r}: must be in [0, sparsity={self.sparsity}]")
        checks = [
            ("block_size", isinstance(self.block_size, int) and self.block_size >= 1),
            ("fisher_block", self.fisher_block is None or (isinstance(self.fisher_block, int) and self.fisher_block
                                                             >= 1 and self.fisher_block % self.block_size == 0)),
            ("steps", self.steps >= 1), ("start_step", 0 <= self.start_step),
            ("end_step", self.end_step is None or self.start_step <= self.end_step <= self.steps),
            ("prune_every", self.prune_every >= 1), ("lr", self.lr > 0), ("batch_size", self.batch_size >= 1),
            ("fisher_grads", self.fisher_grads >= 1), ("fisher_batch_size", self.fisher_batch_size >= 1),
            ("damp", self.damp > 0), ("eval_every", self.eval_every is None or self.eval_every >= 1),
            ("last pruning step", self.last_step <= self.steps),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ConfigError("invalid sparsity settings: " + ", ".join(
                f"{n}={getattr(self, n)!r}" if hasattr(self, n) else f"{n}={self.last_step} > steps={self.steps}"
                for n in bad))


class GradualPruner:
    """Prunes to ``cubic_schedule`` at ``config.pruning_steps()``; a ``Trainer`` callback (``cb(trainer)`` runs
    after each optimizer step). Masks only grow, and stay fixed after the last pruning step.

    fisher_batches(step) -> batches for one Fisher estimate (obert); loss_fn(model, batch) -> mean loss.
    """

    def __init__(self, config: SparsityConfig, fisher_batches: Callable[[int], Iterable[Any]] | None = None,
                 loss_fn: LossFn | None = None) -> None:
        config.validate()
        if config.method == "obert" and (fisher_batches is None or loss_fn is None):
            raise ConfigError("method=obert needs fisher_batches and loss_fn")
        self.config = config
        self.fisher_batches = fisher_batches
        self.loss_fn = loss_fn
        self.steps = set(config.pruning_steps())
        self.masks: Masks | None = None
        self.history: list[dict[str, float]] = []  # {"step", "target", "sparsity"} per pruning step

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Attach (dense) masks to ``model`` and prune at step 0 when the schedule starts there."""
        check_blocks(model, self.config.block_size, self.config.fisher_block_size)
        self.masks = Masks.dense(model).attach(model, optimizer)
        if 0 in self.steps:
            self.prune(model, 0)
        return self.masks

    def prune(self, model: nn.Module, step: int) -> None:
        cfg = self.config
        if self.masks is None:
            raise BertkitError("GradualPruner.prune before start(model)")
        target = cubic_schedule(step, cfg.start_step, cfg.last_step, cfg.initial_sparsity, cfg.sparsity)
        if cfg.method == "magnitude":
            new = magnitude_masks(model, target, cfg.block_size, current=self.masks)
        else:
            assert self.fisher_batches is not None and self.loss_fn is not None
            new = obert_masks(model, target, self.fisher_batches(step), self.loss_fn, cfg.block_size, cfg.damp,
                              cfg.fisher_grads, cfg.fisher_block_size, current=self.masks)
        self.masks.update(new)
        self.masks.apply(model)
        achieved = self.masks.sparsity()["overall"]
        self.history.append({"step": step, "target": target, "sparsity": achieved})
        log.info("pruned (%s) at step %d: sparsity %.4f (target %.4f)", cfg.method, step, achieved, target)

    def __call__(self, trainer: Trainer) -> None:
        if trainer.state.step in self.steps:
            self.prune(trainer.module, trainer.state.step)


@dataclass
class SparsityResult:
    masks: Masks
    state: TrainState
    history: list[dict[str, float]] = field(default_factory=list)  # per pruning step: step, target, sparsity
    output_dir: Path | None = None


def prune_gradually(task_model: TaskModel, train_features: Features,
                    eval_fn: Callable[[TaskModel], dict[str, float]] | None = None,
                    config: SparsityConfig | None = None,
                    output_dir: str | os.PathLike[str] | None = None) -> SparsityResult:
    """Gradual pruning of a fine-tuned task model on its training data, with the one ``Trainer``.

    Batches and loss as ``finetune`` builds them; eval records carry the sparsity of the moment. The model is
    pruned and trained in place; with ``output_dir`` it is saved there (HF layout + ``masks.safetensors``, next
    to the Trainer's metrics.jsonl, curve and last checkpoint), else the Trainer's files go to a temporary folder
    that is removed. No resume: the Trainer's checkpoints do not carry the masks or the pruner's position.
    Keep-best is off: an early best would be a denser model. The masks come back detached:
    ``masks.attach(model)`` to fine-tune further with the zeros kept.
    """
    from bertkit.data.features import make_batch, shuffled_batches
    from bertkit.train.trainer import TrainConfig, Trainer

    cfg = config or SparsityConfig()
    cfg.validate()  # every setting error before any work
    head = task_model.head
    check_blocks(head, cfg.block_size, cfg.fisher_block_size)
    if len(train_features) == 0:
        raise BertkitError("prune_gradually: the training set is empty")
    tcfg = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule, seed=cfg.seed,
                       eval_every=cfg.eval_every, metric="sparsity", greater_is_better=True, progress=cfg.progress,
                       device=cfg.device, keep_checkpoints=1, checkpoint_every=cfg.steps)

    def fisher_batches(step: int) -> Sequence[Any]:
        n = cfg.fisher_grads * cfg.fisher_batch_size  # a fresh random sample of the training set per estimate
        order = np.random.default_rng([cfg.seed, 1, step]).permutation(len(train_features))[:n]
        return [make_batch(train_features, order[i:i + cfg.fisher_batch_size])
                for i in range(0, len(order), cfg.fisher_batch_size)]

    pruner = GradualPruner(cfg, fisher_batches, task_model.loss)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        metrics = dict(eval_fn(task_model)) if eval_fn is not None else {}
        assert pruner.masks is not None
        return {**metrics, "sparsity": pruner.masks.sparsity()["overall"]}

    tmp = None if output_dir is not None else tempfile.TemporaryDirectory(prefix="bertkit-prune-")
    out = Path(output_dir) if output_dir is not None else Path(tmp.name)
    try:
        trainer = Trainer(head, tcfg, batches=lambda epoch: shuffled_batches(train_features, cfg.batch_size,
                                                                             cfg.seed, epoch),
                          loss_fn=task_model.loss, output_dir=out, evaluate=evaluate, callbacks=[pruner],
                          fingerprint={"sparsity": asdict(cfg)})
        masks = pruner.start(trainer.module, trainer.optimizer)
        state = trainer.fit()
        masks.detach()
        masks.apply(head)
    finally:
        if tmp is not None:
            tmp.cleanup()
    head.eval()
    if output_dir is not None:
        task_model.save_pretrained(out)
        masks.save(out)
    return SparsityResult(masks, state, pruner.history, out if output_dir is not None else None)
