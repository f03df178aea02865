"""Pruning to a measured speedup: ZipLM's idea (Kurtic et al. 2023) in its simplest form.

Prune a fraction of the remaining heads and neurons by importance, measure the real latency on this machine,
repeat until baseline_time / time reaches the target (``prune_to_speedup``; ``latency_measure`` is the default
clock).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from bertkit.compress.structured.importance import Importance, ImportanceSource
from bertkit.compress.structured.selection import prune_lowest, without
from bertkit.compress.structured.surgery import PruningError, encoder_of, layer_sizes
from bertkit.inference.engine import Engine
from bertkit.model.attention import Packing

log = logging.getLogger("bertkit")


class SpeedupStep(NamedTuple):
    step: int  # 0: the unpruned baseline
    sizes: dict[str, list[int]]  # {"heads": per layer, "intermediate": per layer}
    speedup: float  # baseline time / time after this step


def latency_measure(batch_size: int = 32, max_length: int = 128, runs: int = 5,
                    seed: int = 0) -> Callable[[nn.Module], float]:
    """A ``measure`` for ``prune_to_speedup``: the median seconds of ``runs`` encoder passes (after one
    warm-up) over one fixed packed batch of ``batch_size`` random sequences of 25..100% of ``max_length``
    tokens, longest first as the engine orders them, in eval mode under ``Engine().running`` (fp32,
    inference_mode). The batch is drawn once (``seed``) and reused for every call."""
    batch: dict[str, Any] = {}

    def measure(model: nn.Module) -> float:
        enc = encoder_of(model)
        cfg = enc.config
        device = next(enc.parameters()).device
        if not batch:
            g = torch.Generator().manual_seed(seed)
            n = min(max_length, cfg.max_tokens)
            lengths = torch.randint(max(1, n // 4), n + 1, (batch_size,), generator=g).sort(descending=True).values
            batch["lengths"] = lengths.tolist()
            batch["ids"] = torch.randint(0, cfg.vocab_size, (int(lengths.sum()),), generator=g)
        ids, packing = batch["ids"].to(device), Packing.from_lengths(batch["lengths"], device=device)
        was_training = enc.training
        enc.eval()
        times = []
        try:
            with Engine().running(device):
                for _ in range(runs + 1):
                    _sync(device)
                    start = time.perf_counter()
                    enc.forward_packed(ids, packing)
                    _sync(device)
                    times.append(time.perf_counter() - start)
        finally:
            enc.train(was_training)
        return statistics.median(times[1:])

    return measure


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prune_to_speedup(model: nn.Module, target_speedup: float, importance: ImportanceSource,
                     measure: Callable[[nn.Module], float] | None = None,
                     step: float = 0.1) -> tuple[nn.Module, list[SpeedupStep]]:
    """Prune ``step`` of the remaining heads and FFN neurons (at least one of each while any layer has more
    than one) by importance, then time the model with ``measure`` (seconds; default ``latency_measure()``),
    until baseline_time / time >= ``target_speedup``.

    ``importance``: fixed scores, sliced as units go, or a callable ``model -> Importance`` re-run before each
    step. Returns (model, history): history[0] is the baseline, one ``SpeedupStep`` per step after it. The
    model is pruned in place; if the floor (one head and one neuron per layer) is reached first, PruningError
    says so, with ``.history``, and the model is left at that floor.
    """
    if not target_speedup > 1:
        raise PruningError(f"target_speedup must be > 1, got {target_speedup}")
    if not 0 < step < 1:
        raise PruningError(f"step must be in (0, 1), got {step}")
    measure = measure or latency_measure()
    enc = encoder_of(model)
    base = measure(model)
    if not base > 0:
        raise PruningError(f"measure returned {base!r} for the unpruned model; it must return seconds > 0")
    history = [SpeedupStep(0, layer_sizes(enc), 1.0)]
    scores = importance if isinstance(importance, Importance) else None
    n_layers = len(enc.layers)
    while history[-1].speedup < target_speedup:
        sizes = history[-1].sizes
        spare_heads, spare_neurons = sum(sizes["heads"]) - n_layers, sum(sizes["intermediate"]) - n_layers
        if spare_heads == 0 and spare_neurons == 0:
            best = max(history, key=lambda s: s.speedup)
            raise PruningError(
                f"target speedup {target_speedup:g}x is out of reach: at the floor of one head and one FFN neuron "
                f"per layer the model measures {history[-1].speedup:.2f}x (best {best.speedup:.2f}x at step "
                f"{best.step}); the model is left at that floor. drop_layers removes whole layers.", history)
        n_heads = min(spare_heads, max(1, math.floor(step * sum(sizes["heads"]) + 0.5)))
        n_neurons = min(spare_neurons, max(1, math.floor(step * sum(sizes["intermediate"]) + 0.5)))
        imp = scores if scores is not None else importance(model)  # type: ignore[operator]
        plan, head_pos = prune_lowest(model, imp, n_heads, n_neurons)
        if scores is not None:
            scores = without(scores, head_pos, plan.neurons)
        t = measure(model)
        history.append(SpeedupStep(len(history), layer_sizes(enc), base / t))
        log.info("prune step %d: %d heads, %d FFN neurons left, %.2fx", history[-1].step,
                 sum(history[-1].sizes["heads"]), sum(history[-1].sizes["intermediate"]), history[-1].speedup)
    return model, history
