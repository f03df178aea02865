"""Which heads and FFN neurons matter: first-order Taylor importance (Michel et al. 2019, "Are Sixteen Heads
Really Better than One?").

A gate g = 1 multiplies each head's attention context (the input of ``attn_out``) and each FFN neuron (the input
of ``mlp_out``). A unit's importance is |g * dL/dg| = |dL/dg|, averaged over calibration batches: the first-order
estimate of how much the loss changes when the unit is removed. The gates are forward pre-hooks, so the model code
is unchanged, and nothing but the gates needs gradients. Scores are per *current* unit:
``Importance.heads[l][j]`` is head ``layers[l].head_ids[j]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.compress.structured.surgery import encoder_of


@dataclass
class Importance:
    """Taylor importance per layer, in each layer's current order: heads[l] (heads_l,), neurons[l] (ffn_l,)."""

    heads: list[Tensor]
    neurons: list[Tensor]


LossFn = Callable[[nn.Module, Any], Tensor]
ImportanceSource = Importance | Callable[[nn.Module], Importance]


def taylor_importance(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, heads: bool = True,
                      neurons: bool = True) -> Importance:
    """First-order Taylor importance |g * dL/dg| of every head and FFN neuron, averaged over ``batches``.

    ``loss_fn(model, batch)`` returns the scalar loss of one batch (``TaskModel.loss`` has this signature).
    The model runs in eval mode (no dropout) with its parameters frozen for the call; both are restored.
    Scores not asked for come back as empty lists.
    """
    enc = encoder_of(model)
    device = next(enc.parameters()).device
    head_gates = [torch.ones(layer.num_heads, device=device, requires_grad=True) for layer in enc.layers] \
        if heads else []
    neuron_gates = [torch.ones(enc.config.layer_intermediate_size(i), device=device, requires_grad=True)
                    for i in range(len(enc.layers))] if neurons else []
    gates = head_gates + neuron_gates
    scores = [torch.zeros_like(g, requires_grad=False) for g in gates]
    handles = []
    for layer, g in zip(enc.layers, head_gates, strict=False):
        handles.append(layer.attn_out.register_forward_pre_hook(_gate_heads(g, layer.num_heads)))
    for layer, g in zip(enc.layers, neuron_gates, strict=False):
        handles.append(layer.mlp_out.register_forward_pre_hook(_gate_neurons(g)))
    was_training = model.training
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    n = 0
    try:
        model.eval()
        for p, _ in frozen:
            p.requires_grad_(False)  # only the gates need gradients: no weight-gradient GEMMs
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, batch)
                if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
                    raise ValueError("loss_fn must return a scalar tensor computed from the model's outputs "
                                     f"(with autograd on), got {loss!r:.80}")
                for s, g in zip(scores, torch.autograd.grad(loss, gates, allow_unused=True), strict=True):
                    if g is not None:  # None: the unit did not reach the loss, importance 0
                        s += g.abs()
                n += 1
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    if n == 0:
        raise ValueError("no calibration batches: importance needs at least one")
    scores = [s / n for s in scores]
    return Importance(scores[:len(head_gates)], scores[len(head_gates):])


def head_importance(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn) -> list[Tensor]:
    """Taylor importance of each head: one (heads_l,) tensor per layer (see ``taylor_importance``)."""
    return taylor_importance(model, batches, loss_fn, neurons=False).heads


def neuron_importance(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn) -> list[Tensor]:
    """Taylor importance of each FFN neuron: one (intermediate_l,) tensor per layer."""
    return taylor_importance(model, batches, loss_fn, heads=False).neurons


def _gate_heads(gate: Tensor, n_heads: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor]]:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
        ctx = args[0]  # (..., heads * head_dim), head-major
        return (ctx * gate.to(ctx.dtype).repeat_interleave(ctx.shape[-1] // n_heads),)
    return hook


def _gate_neurons(gate: Tensor) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor]]:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
        return (args[0] * gate.to(args[0].dtype),)  # (..., intermediate)
    return hook
