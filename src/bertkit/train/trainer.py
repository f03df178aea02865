"""The training loop every bertkit trainer runs on: fine-tuning, pretraining, distillation, the bi-encoder and the
reranker.

A trainer supplies four things and the engine does the rest:
  model                        any ``nn.Module``
  batches(epoch) -> Sequence   the micro-batches of one epoch, deterministic for (seed, epoch); each has
                               ``num_tokens`` (throughput), ``num_units`` (what its loss averages over)
                               and ``to(device)``
  loss_fn(model, batch)        the mean loss of one micro-batch, a scalar tensor
  evaluate(model) -> metrics   optional; run every ``eval_every`` steps or at each epoch end

The engine owns: AdamW (no decay on biases/LayerNorm; optional layer-wise LR decay), warmup then
linear/cosine decay, gradient accumulation weighted by ``num_units`` (so k micro-batches give the same
gradient as one batch k times larger), clipping, seeded determinism, bf16 autocast where asked,
keep-best, early stopping, a wall-clock budget, ``metrics.jsonl`` + a curve PNG, a progress bar, and
atomic checkpoints with RNG state and data position so that ``resume`` after a ``kill -9`` continues
the very same loss curve.

Under ``torchrun`` (a ``torch.distributed`` process group already initialised) the model is wrapped in
DistributedDataParallel and each rank's ``batches`` are its own share of every global batch. The step's
loss units are summed over ranks first, so the gradient is the unit-weighted mean over the *global*
batch (as one process with the whole batch would compute it), not a mean of per-rank means. Every rank
evaluates (same weights, same data, same numbers, so early stopping agrees); rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bertkit.errors import CheckpointError
from bertkit.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from bertkit.train.distributed import all_sum
from bertkit.train.optim import SCHEDULES, build_optimizer, lr_factor
from bertkit.train.plot import plot_training_curve, read_metrics
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.recipes import config_from_dict as config_from_dict  # re-exported: the one config builder
from bertkit.utils.recipes import parse_duration
from bertkit.utils.runtime import pick_device

log = logging.getLogger("bertkit")

PRECISIONS = ("auto", "fp32", "bf16")
LOWER_IS_BETTER = ("loss", "mse", "mae")
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32  # examples per micro-batch (the trainer builds batches with it)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    max_grad_norm: float | None = 1.0
    layer_decay: float = 1.0  # < 1: layer-wise LR decay
    seed: int = 42
    eval_every: int | None = None  # optimizer steps; None: at the end of each epoch
    metric: str | None = None  # eval metric for keep-best and early stopping (None: the trainer's default)
    greater_is_better: bool | None = None  # None: False for loss/mse/mae, True for anything else
    patience: int | None = None  # early stopping after this many evals without improvement
    # seconds of training, counted across resumes; recipes and flags may write "90s", "10m", "1.5h" (the parse hook)
    time_budget: float | None = field(default=None, metadata={"parse": parse_duration})  # seconds, or 10m, 1.5h
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    checkpoint_every: int | None = None  # optimizer steps; None: at every eval
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    device: str | None = None  # None: CUDA when present, else CPU

    def validate(self) -> None:
        checks = [
            ("epochs", self.epochs > 0 or self.max_steps is not None), ("batch_size", self.batch_size >= 1),
            ("grad_accum", self.grad_accum >= 1), ("lr", self.lr > 0), ("warmup_ratio", 0 <= self.warmup_ratio < 1),
            ("schedule", self.schedule in SCHEDULES), ("precision", self.precision in PRECISIONS),
            ("max_steps", self.max_steps is None or self.max_steps >= 1),
            ("eval_every", self.eval_every is None or self.eval_every >= 1),
            ("checkpoint_every", self.checkpoint_every is None or self.checkpoint_every >= 1),
            ("keep_checkpoints", self.keep_checkpoints >= 1), ("log_every", self.log_every >= 1),
            ("time_budget", self.time_budget is None or self.time_budget > 0),
            ("patience", self.patience is None or self.patience >= 1),
            ("layer_decay", 0 < self.layer_decay <= 1),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError("invalid training settings: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


class TrainBatch(Protocol):
    num_tokens: int
    num_units: int

    def to(self, device: torch.device) -> TrainBatch: ...


@dataclass
class TrainState:
    """Everything about the run's position that a checkpoint must carry besides the tensors."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    micro: int = 0  # micro-batches of the current epoch already consumed
    elapsed: float = 0.0  # seconds of training so far, across resumes
    tokens: int = 0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    last_eval_step: int = -1
    window_loss: float = 0.0  # loss sum and count since the last train log record
    window_count: int = 0
    stopped: str = ""  # why the run ended: "done", "time budget", "early stopping"
    history: list[dict] = field(default_factory=list)  # eval records


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


class Trainer:
    def __init__(self, model: nn.Module, config: TrainConfig, batches: Callable[[int], Sequence[TrainBatch]],
                 loss_fn: Callable[[nn.Module, Any], Tensor], output_dir: str | Path,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 on_best: Callable[[nn.Module, dict[str, float]], None] | None = None,
                 fingerprint: dict[str, Any] | None = None,
                 callbacks: Sequence[Callable[[Trainer], None]] = (), find_unused_parameters: bool = False) -> None:
        """``find_unused_parameters``: some trainable parameters may get no gradient in a step (a student whose top
        layers no distillation loss reaches); DDP then looks for them after each forward instead of waiting."""
        config.validate()
        self.config = config
        self.device = pick_device(config.device)
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.module = model.to(self.device)  # the bare model: what is saved, evaluated and optimized
        self.model = self.module  # what training forwards through
        if self.distributed:
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
        self.batches = batches
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate
        self.on_best = on_best
        self.callbacks = list(callbacks)
        self.output_dir = Path(output_dir)
        self.metrics_file = self.output_dir / METRICS_FILE
        self.autocast_dtype = pick_precision(config.precision, self.device)
        self.metric = config.metric or "loss"
        self.greater_is_better = (config.greater_is_better if config.greater_is_better is not None
                                  else self.metric not in LOWER_IS_BETTER)
        # Settings that must match for a checkpoint to be resumed (the budget and logging may change).
        run = {k: v for k, v in asdict(config).items()
               if k not in ("time_budget", "progress", "log_every", "device", "keep_checkpoints")}
        self.fingerprint = {**(fingerprint or {}), "train": run}
        self.micro_per_epoch = len(batches(0))
        if self.micro_per_epoch == 0:
            raise ValueError("no training batches: the training set is empty")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = math.ceil(config.warmup_ratio * self.total_steps)
        self.optimizer = build_optimizer(self.module, config.lr, config.weight_decay, config.layer_decay)
        self.state = TrainState()

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank's RNG state is gathered into it). None on other ranks."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        ranks = [rng]
        if self.distributed:
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, rng)
        path = None
        if self.is_main:
            path = save_checkpoint(self.output_dir, self.state.step, {
                "fingerprint": self.fingerprint,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
                "rng": ranks[0],
                "rng_ranks": ranks,
            }, keep=self.config.keep_checkpoints)
        if self.distributed:
            dist.barrier()  # nobody resumes or exits before the file is there
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``output_dir``; False when there is none."""
        found = list_checkpoints(self.output_dir)
        if not found:
            log.warning("--resume: no checkpoint in %s; starting from step 0", self.output_dir)
            return False
        ckpt = load_checkpoint(found[-1], self.fingerprint)
        try:
            self.module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise_incompatible(found[-1], e)
        self.state = TrainState(**ckpt["state"])
        budget = self.config.time_budget
        if self.state.stopped == "time budget" and not (budget and self.state.elapsed >= budget):
            self.state.stopped = ""  # resumed with a larger budget (or none): the run goes on
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) != self.world_size:
            log.warning("resuming %d-rank checkpoint on %d ranks: dropout draws will differ from an "
                        "uninterrupted run", len(ranks), self.world_size)
        rng = ranks[self.rank] if len(ranks) == self.world_size else ranks[0]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        # Drop metric records written after the checkpoint: the resumed run writes them again.
        if self.is_main:
            kept = [r for r in read_metrics(self.metrics_file) if r.get("step", 0) <= self.state.step]
            atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
        log.info("resumed from %s: step %d/%d, epoch %d, micro-batch %d", found[-1].name, self.state.step,
                 self.total_steps, self.state.epoch, self.state.micro)
        return True

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        cfg, st = self.config, self.state
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and self.resume()):
            # dropout draws (its own stream per rank); the data order is seeded per epoch by the caller
            torch.manual_seed(cfg.seed + self.rank)
            if self.is_main:
                self.metrics_file.unlink(missing_ok=True)
        st = self.state
        log.info("training on %s%s (%s, %s AdamW): %d steps = %.2f epochs x %d steps, %d micro-batches of %d, "
                 "accumulation %d", self.device, f" x {self.world_size} ranks (DDP)" if self.distributed else "",
                 "bf16 autocast" if self.autocast_dtype else "fp32",
                 "fused" if self.optimizer.defaults.get("fused") else "per-tensor", self.total_steps,
                 self.total_steps / self.steps_per_epoch, self.steps_per_epoch, self.micro_per_epoch,
                 cfg.batch_size, cfg.grad_accum)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=st.step, disable=not (cfg.progress and self.is_main), desc="train",
                   unit="step", dynamic_ncols=True, mininterval=1.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        window_start, window_tokens = time.perf_counter(), 0
        t_last = time.perf_counter()
        while st.step < self.total_steps and not st.stopped:
            epoch_batches = self.batches(st.epoch)
            while st.micro < len(epoch_batches) and st.step < self.total_steps and not st.stopped:
                group = epoch_batches[st.micro:st.micro + cfg.grad_accum]
                # 0 when no token of the group carries a label (ner: words that tokenize to nothing)
                units = self._all_sum([sum(b.num_units for b in group)])[0] or 1
                self._set_lr()
                step_loss, step_tokens = 0.0, 0
                for i, b in enumerate(group):
                    b = b.to(self.device)
                    # DDP: gradients are all-reduced on the group's last backward only
                    sync = self.model.no_sync() if self.distributed and i < len(group) - 1 else nullcontext()
                    with sync:
                        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                            enabled=self.autocast_dtype is not None):
                            loss = self.loss_fn(self.model, b)
                        # DDP averages gradients over ranks, hence x world_size
                        (loss * (b.num_units * self.world_size / units)).backward()
                    step_loss += loss.item() * b.num_units / units
                    step_tokens += b.num_tokens
                step_loss, step_tokens = self._all_sum([step_loss, step_tokens])  # tokens of all ranks
                window_tokens += int(step_tokens)
                st.tokens += int(step_tokens)
                if not math.isfinite(step_loss):  # checked on every rank alike, before the update
                    self._raise_not_finite(step_loss)
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                st.step += 1
                st.micro += len(group)
                now = time.perf_counter()
                st.elapsed += now - t_last
                if self.distributed:  # the ranks' mean, so that all stop at the same step on a time budget
                    st.elapsed = self._all_sum([st.elapsed])[0] / self.world_size
                t_last = now
                st.window_loss += step_loss
                st.window_count += 1
                bar.update(1)
                epoch_end = st.micro >= len(epoch_batches)
                if epoch_end:
                    st.epoch, st.micro = st.epoch + 1, 0
                if st.step % cfg.log_every == 0 or st.step == self.total_steps:
                    rate = window_tokens / max(now - window_start, 1e-9)
                    self._log_train(rate)
                    bar.set_postfix(loss=f"{st.window_loss / max(st.window_count, 1):.4f}"
                                    if st.window_count else "", tok_s=f"{rate:,.0f}")
                    st.window_loss, st.window_count = 0.0, 0
                    window_start, window_tokens = now, 0
                if cfg.time_budget and st.elapsed >= cfg.time_budget:
                    st.stopped = "time budget"
                due_eval = (cfg.eval_every is not None and st.step % cfg.eval_every == 0) or \
                           (cfg.eval_every is None and epoch_end)
                if due_eval:
                    self._evaluate()
                if due_eval or (cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0):
                    self.save()
                for cb in self.callbacks:
                    cb(self)
                t_last = time.perf_counter()  # eval and checkpoint time is not training time
                if epoch_end:
                    break
        bar.close()
        st.stopped = st.stopped or "done"
        if st.window_count:
            self._log_train(0.0)
            st.window_loss, st.window_count = 0.0, 0
        if st.last_eval_step != st.step:
            self._evaluate()
        self.save()
        self.plot()
        log.info("training stopped (%s) at step %d after %.0f s, %d tokens (%.0f tokens/s)%s", st.stopped, st.step,
                 st.elapsed, st.tokens, st.tokens / max(st.elapsed, 1e-9),
                 f"; best {self.metric}={st.best:.4f} at step {st.best_step}" if st.best is not None else "")
        return st

    def _all_sum(self, values: list[float]) -> list[float]:
        """Sum over ranks (identity in one process)."""
        return all_sum(values, self.device) if self.distributed else values

    def _raise_not_finite(self, loss: float) -> None:
        found = list_checkpoints(self.output_dir)
        last = f"the last good checkpoint is {found[-1]} (resume from it with a lower learning rate)" if found \
            else "no checkpoint was written yet"
        raise FloatingPointError(f"loss is {loss} at step {self.state.step + 1}; stopped before the update: {last}; "
                                 "lower the learning rate or check the data")

    def _set_lr(self) -> None:
        cfg, st = self.config, self.state
        step = st.step
        if cfg.time_budget:  # the schedule follows whichever runs out first: steps or time
            step = max(step, int(st.elapsed / cfg.time_budget * self.total_steps))
        factor = lr_factor(min(step, self.total_steps - 1), self.warmup_steps, self.total_steps, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor

    def _log_train(self, tokens_per_s: float) -> None:
        st = self.state
        self._append({"kind": "train", "step": st.step, "epoch": round(self._epoch_float(), 4),
                      "loss": st.window_loss / max(st.window_count, 1), "lr": self.optimizer.param_groups[-1]["lr"],
                      "tokens_per_s": round(tokens_per_s, 1), "elapsed_s": round(st.elapsed, 2)})

    def _epoch_float(self) -> float:
        return self.state.epoch + self.state.micro / self.micro_per_epoch

    def _evaluate(self) -> None:
        cfg, st = self.config, self.state
        st.last_eval_step = st.step
        if self.evaluate_fn is None:
            return
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                             enabled=self.autocast_dtype is not None):
            # scalars only: nested results (a task model's per_label table) stay out of metrics.jsonl and the log
            metrics = {k: float(v) for k, v in self.evaluate_fn(self.module).items() if not isinstance(v, dict)}
        self.model.train()
        if self.metric not in metrics:
            raise ValueError(f"metric {self.metric!r} is not among the eval metrics: {', '.join(metrics)}")
        record = {"kind": "eval", "step": st.step, "epoch": round(self._epoch_float(), 4), **metrics}
        self._append(record)
        st.history.append(record)
        value = metrics[self.metric]
        better = st.best is None or (value > st.best if self.greater_is_better else value < st.best)
        log.info("eval at step %d: %s%s", st.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                 " (best so far)" if better else "")
        if better:
            st.best, st.best_step, st.bad_evals = value, st.step, 0
            if self.on_best is not None and self.is_main:
                self.on_best(self.module, metrics)
        else:
            st.bad_evals += 1
            if cfg.patience and st.bad_evals >= cfg.patience:
                st.stopped = "early stopping"
        self.plot()

    def _append(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if not self.is_main:
            return
        try:
            plot_training_curve(self.metrics_file, self.output_dir / CURVE_FILE,
                                None if self.metric == "loss" else self.metric)
        except Exception as e:  # a plot must never cost the run
            log.warning("could not draw %s: %s", CURVE_FILE, e)


def raise_incompatible(path: Path, error: Exception) -> None:
    # torch's first line is only "Error(s) in loading state_dict for X:"; the mismatch follows on the next ones
    first = " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:300]
    raise CheckpointError(f"{path}: checkpoint does not fit this model/optimizer ({first})") from None
