"""Pruning by importance: the least important heads and FFN neurons, ranked globally across layers.

``prune_by_importance`` removes fixed fractions of all heads and neurons; ``prune_lowest`` (also what each step of
``prune_to_speedup`` runs) removes the n lowest-scoring units, every layer keeping at least one of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bertkit.compress.structured.importance import Importance, ImportanceSource
from bertkit.compress.structured.surgery import PruningError, encoder_of, layer_sizes, prune_heads, prune_neurons


@dataclass
class PrunePlan:
    """What one pruning call removed."""

    heads: dict[int, list[int]]  # layer -> head ids (of the unpruned layer)
    neurons: dict[int, list[int]]  # layer -> neuron positions in the layer's FFN before this call


def prune_by_importance(model: nn.Module, head_fraction: float, neuron_fraction: float,
                        importance: ImportanceSource) -> PrunePlan:
    """Prune the least important ``head_fraction`` of all heads and ``neuron_fraction`` of all FFN neurons the
    model has now, ranked globally across layers; every layer keeps at least one of each.

    Counts are round(fraction * total). ``importance``: scores for the model as it is, or a callable
    ``model -> Importance`` (e.g. ``lambda m: taylor_importance(m, batches, loss_fn)``). Raw scores are
    compared across layers as they are.
    """
    enc = encoder_of(model)
    sizes = layer_sizes(enc)
    n_heads = _count(head_fraction, sum(sizes["heads"]), len(enc.layers), "head")
    n_neurons = _count(neuron_fraction, sum(sizes["intermediate"]), len(enc.layers), "neuron")
    imp = importance if isinstance(importance, Importance) else importance(model)
    plan, _ = prune_lowest(model, imp, n_heads, n_neurons)
    return plan


def _count(fraction: float, total: int, n_layers: int, what: str) -> int:
    if not 0 <= fraction < 1:
        raise PruningError(f"{what}_fraction must be in [0, 1), got {fraction}")
    n = math.floor(fraction * total + 0.5)
    if n > total - n_layers:
        raise PruningError(f"{what}_fraction {fraction} asks to prune {n} of {total} {what}s, but each of the "
                           f"{n_layers} layers keeps one: at most {total - n_layers}")
    return n


def prune_lowest(model: nn.Module, imp: Importance, n_heads: int,
                  n_neurons: int) -> tuple[PrunePlan, dict[int, list[int]]]:
    """Prune the n lowest-scoring heads / neurons; returns the plan and the heads' current positions."""
    enc = encoder_of(model)
    sizes = layer_sizes(enc)
    head_pos = _lowest(_checked(imp.heads, sizes["heads"], "heads"), n_heads) if n_heads else {}
    neuron_pos = _lowest(_checked(imp.neurons, sizes["intermediate"], "neurons"), n_neurons) if n_neurons else {}
    plan = PrunePlan({i: [enc.layers[i].head_ids[j] for j in js] for i, js in head_pos.items()}, neuron_pos)
    prune_heads(model, plan.heads)
    prune_neurons(model, plan.neurons)
    return plan, head_pos


def _checked(scores: list[Tensor], sizes: list[int], what: str) -> list[Tensor]:
    if len(scores) != len(sizes):
        raise PruningError(f"importance.{what} has {len(scores)} layers, the model {len(sizes)}")
    for i, (s, n) in enumerate(zip(scores, sizes, strict=True)):
        if tuple(s.shape) != (n,):
            raise PruningError(f"importance.{what}[{i}] has shape {tuple(s.shape)}, layer {i} has {n} {what}; "
                               "compute importance on the model as it is now")
        if not bool(torch.isfinite(s).all()):
            raise PruningError(f"importance.{what}[{i}] has non-finite scores")
    return scores


def _lowest(scores: list[Tensor], n: int) -> dict[int, list[int]]:
    """The n lowest-scoring units across layers, {layer: positions}, each layer keeping at least one.
    Ties go to the earlier layer and position, so the choice is deterministic."""
    ranked = sorted((float(s), i, j) for i, t in enumerate(scores) for j, s in enumerate(t.tolist()))
    left = [len(t) for t in scores]
    chosen: dict[int, list[int]] = {}
    for _, i, j in ranked:
        if n == 0:
            break
        if left[i] > 1:
            chosen.setdefault(i, []).append(j)
            left[i] -= 1
            n -= 1
    return {i: sorted(js) for i, js in sorted(chosen.items())}


def without(imp: Importance, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> Importance:
    """The scores of the units left after removing positions ``heads`` / ``neurons``."""
    def drop(scores: list[Tensor], gone: dict[int, list[int]]) -> list[Tensor]:
        out = []
        for i, s in enumerate(scores):
            keep = torch.ones(len(s), dtype=torch.bool)
            keep[gone.get(i, [])] = False
            out.append(s[keep.to(s.device)])
        return out
    return Importance(drop(imp.heads, heads), drop(imp.neurons, neurons))
