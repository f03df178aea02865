"""Structured pruning: remove attention heads, FFN neurons and whole layers, with physically smaller matrices.

Pruned weights are sliced, not masked: a layer that keeps 7 of 12 heads has a ``Wqkv`` of 3 * 7 * head_dim
rows and does 7/12 of the attention work. The config records the new shapes (``pruned_heads``,
``intermediate_sizes``, ``num_hidden_layers``; see ``model/config.py``), so ``save_pretrained`` and
``from_pretrained`` round-trip, for a ``BertModel`` and for a task head (``SequenceClassifier`` /
``TokenClassifier``: their ``.encoder`` is pruned; ``TaskModel.save_pretrained`` then saves it).

**Importance** (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): a gate g = 1 multiplies
each head's attention context (the input of ``attn_out``) and each FFN neuron (the input of ``mlp_out``).
A unit's importance is |g * dL/dg| = |dL/dg|, averaged over calibration batches: the first-order estimate
of how much the loss changes when the unit is removed. The gates are forward pre-hooks, so the model code
is unchanged, and nothing but the gates needs gradients.

**Ids.** Head ids are those of the unpruned layer (0..num_attention_heads-1), as in Hugging Face's
``pruned_heads``, so pruning twice merges; ``Layer.head_ids`` lists the ones a layer keeps. Neuron ids are
positions in the layer's current FFN (a layer keeps no record of its original width). Scores are per
*current* unit: ``Importance.heads[l][j]`` is head ``layers[l].head_ids[j]``.

**Floor.** A layer keeps at least one head and one neuron; remove whole layers with ``drop_layers``.

**Families.** Heads carry their positions along: DeBERTa's per-layer position projections (``pos_k`` / ``pos_q``)
lose the same rows as q, k and v (with ``share_att_key`` they are q and k), MPNet's shared bucket bias and ALiBi's
slopes are looked up by the kept heads' original ids (``Layer.head_ids``). GLU FFNs (ModernBERT) lose a neuron's
gate and up rows together. ``drop_layers`` slices ModernBERT's ``layer_types``; a family whose layer 0 has no
attention norm (``first_layer_attn_norm=False``) keeps the model exact by marking the new first layer as having one
when the family can write that down (bertkit's own ``bert`` layout), and refuses otherwise (ModernBERT: keep layer 0).

**prune_to_speedup** is ZipLM's idea (Kurtic et al. 2023) in its simplest form: prune a fraction of the
remaining heads and neurons by importance, measure the real latency on this machine, repeat until
baseline_time / time reaches the target.

Prune after training, or build the optimizer again: sliced layers are new ``nn.Linear`` modules. Prune the
float model: int8 layers (``inference/int8.py``) are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError, ConfigError
from bertkit.inference.engine import Engine
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel, Layer
from bertkit.model.config import EncoderConfig
from bertkit.model.families import hf_config

log = logging.getLogger("bertkit")


class PruningError(BertkitError, ValueError):
    """A pruning request that cannot be met. ``history``: the steps ``prune_to_speedup`` took."""

    def __init__(self, message: str, history: list[SpeedupStep] | None = None) -> None:
        super().__init__(message)
        self.history = history or []


@dataclass
class Importance:
    """Taylor importance per layer, in each layer's current order: heads[l] (heads_l,), neurons[l] (ffn_l,)."""

    heads: list[Tensor]
    neurons: list[Tensor]


@dataclass
class PrunePlan:
    """What one pruning call removed."""

    heads: dict[int, list[int]]  # layer -> head ids (of the unpruned layer)
    neurons: dict[int, list[int]]  # layer -> neuron positions in the layer's FFN before this call


class SpeedupStep(NamedTuple):
    step: int  # 0: the unpruned baseline
    sizes: dict[str, list[int]]  # {"heads": per layer, "intermediate": per layer}
    speedup: float  # baseline time / time after this step


LossFn = Callable[[nn.Module, Any], Tensor]
ImportanceSource = Importance | Callable[[nn.Module], Importance]


def encoder_of(model: nn.Module) -> BertModel:
    """The ``BertModel`` to prune: ``model`` itself, or a task head's ``.encoder``."""
    if isinstance(model, BertModel):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, BertModel):
        return encoder
    raise TypeError(f"expected a BertModel or a task head with an .encoder (SequenceClassifier, TokenClassifier), "
                    f"got {type(model).__name__}")


def layer_sizes(model: nn.Module) -> dict[str, list[int]]:
    """{"heads": heads per layer, "intermediate": FFN width per layer}."""
    enc = encoder_of(model)
    return {"heads": [layer.num_heads for layer in enc.layers],
            "intermediate": [enc.config.layer_intermediate_size(i) for i in range(len(enc.layers))]}


# ---- importance --------------------------------------------------------------------------------------
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


# ---- physical pruning --------------------------------------------------------------------------------
def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove heads ``{layer: [head ids]}`` (ids of the unpruned layer), slicing their q, k and v rows of
    ``Wqkv`` and their columns of ``attn_out``; ``config.pruned_heads`` is merged with them. Returns ``model``."""
    enc = encoder_of(model)
    cfg = enc.config
    todo = {}
    for layer_id, ids in heads.items():
        layer = _layer(enc, layer_id, "prune_heads")
        ids = sorted(set(_ints(ids, f"prune_heads: layer {layer_id}")))
        for h in ids:
            if not 0 <= h < cfg.num_attention_heads:
                raise PruningError(f"prune_heads: layer {layer_id} has no head {h}; head ids are "
                                   f"0..{cfg.num_attention_heads - 1} (those of the unpruned layer)")
            if h not in layer.head_ids:
                raise PruningError(f"prune_heads: head {h} of layer {layer_id} is already pruned; head ids are "
                                   f"those of the unpruned layer (config.pruned_heads: {cfg.pruned_heads})")
        if len(ids) == layer.num_heads:
            raise PruningError(f"prune_heads: would remove every head of layer {layer_id} ({len(ids)} of "
                               f"{layer.num_heads}); a layer keeps at least one (drop_layers removes a layer)")
        if ids:
            _check_plain(layer, layer_id, ("Wqkv", "attn_out", *(n for n in ("pos_k", "pos_q")
                                                                 if getattr(layer, n) is not None)))
            todo[layer_id] = ids
    for layer_id, ids in todo.items():
        layer = enc.layers[layer_id]
        _slice_heads(layer, [j for j, h in enumerate(layer.head_ids) if h not in ids], cfg.head_dim)
        cfg.pruned_heads[layer_id] = sorted(set(cfg.pruned_heads.get(layer_id, [])) | set(ids))
    cfg.pruned_heads = dict(sorted(cfg.pruned_heads.items()))
    cfg.validate()
    return model


def prune_neurons(model: nn.Module, neurons: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove FFN neurons ``{layer: [positions]}``: rows of ``mlp_in`` (gate and up rows with GLU) and columns
    of ``mlp_out``; ``config.intermediate_sizes`` records the new widths. Returns ``model``."""
    enc = encoder_of(model)
    cfg = enc.config
    todo = {}
    for layer_id, ids in neurons.items():
        layer = _layer(enc, layer_id, "prune_neurons")
        width = cfg.layer_intermediate_size(layer_id)
        ids = sorted(set(_ints(ids, f"prune_neurons: layer {layer_id}")))
        bad = [j for j in ids if not 0 <= j < width]
        if bad:
            raise PruningError(f"prune_neurons: layer {layer_id} has no neuron {bad[0]}; its FFN has "
                               f"{width} (positions 0..{width - 1})")
        if len(ids) == width:
            raise PruningError(f"prune_neurons: would remove every FFN neuron of layer {layer_id} ({width}); a layer "
                               "keeps at least one (drop_layers removes a layer)")
        if ids:
            _check_plain(layer, layer_id, ("mlp_in", "mlp_out"))
            todo[layer_id] = ids
    if not todo:
        return model
    sizes = [cfg.layer_intermediate_size(i) for i in range(cfg.num_hidden_layers)]
    for layer_id, ids in todo.items():
        layer, width = enc.layers[layer_id], sizes[layer_id]
        removed = set(ids)
        keep = torch.tensor([j for j in range(width) if j not in removed])
        rows = torch.cat((keep, keep + width)) if layer.glu else keep  # GLU: rows [gate; up]
        layer.mlp_in = _slice_linear(layer.mlp_in, rows, dim=0)
        layer.mlp_out = _slice_linear(layer.mlp_out, keep, dim=1)
        sizes[layer_id] = len(keep)
    cfg.intermediate_sizes = sizes
    cfg.validate()
    return model


def drop_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only layers ``keep`` (increasing order), renumbered 0..len(keep)-1; the config follows."""
    enc = encoder_of(model)
    cfg = enc.config
    keep = _ints(keep, "drop_layers: keep")
    if not keep:
        raise PruningError("drop_layers: keep is empty; an encoder needs at least one layer")
    bad = [i for i in keep if not 0 <= i < len(enc.layers)]
    if bad:
        raise PruningError(f"drop_layers: layer {bad[0]} does not exist; the model has layers 0..{len(enc.layers) - 1}")
    if keep != sorted(set(keep)):
        raise PruningError(f"drop_layers: keep must list layers in increasing order, each once; got {keep}")
    new_first_norm = check_first_layer(cfg, keep)
    enc.layers = nn.ModuleList(enc.layers[i] for i in keep)
    cfg.pruned_heads = {new: cfg.pruned_heads[old] for new, old in enumerate(keep) if old in cfg.pruned_heads}
    if cfg.intermediate_sizes is not None:
        cfg.intermediate_sizes = [cfg.intermediate_sizes[i] for i in keep]
    if cfg.layer_types is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    if new_first_norm:
        cfg.first_layer_attn_norm = True
    cfg.num_hidden_layers = len(keep)
    cfg.validate()
    return model


def check_first_layer(cfg: EncoderConfig, keep: Sequence[int]) -> bool:
    """Whether keeping layers ``keep`` gives a pre-norm model without layer 0's missing attention norm a first layer
    that has one (then ``first_layer_attn_norm`` must become true); PruningError if the family cannot write that
    down (ModernBERT: its config has no such setting, so the saved model would load without the norm)."""
    if not (cfg.prenorm and not cfg.first_layer_attn_norm and keep and keep[0] != 0):
        return False
    try:
        hf_config(dataclasses.replace(cfg, first_layer_attn_norm=True, extra=dict(cfg.extra)))
    except ConfigError:
        raise PruningError(f"drop_layers: keep={list(keep)} drops layer 0, but a {cfg.model_type} model's first "
                           "layer has no attention norm (first_layer_attn_norm=false) and every later layer has one, "
                           "which the family's config cannot express: keep layer 0") from None
    return True


def _layer(enc: BertModel, layer_id: Any, who: str) -> Layer:
    if isinstance(layer_id, bool) or not isinstance(layer_id, int) or not 0 <= layer_id < len(enc.layers):
        raise PruningError(f"{who}: layer {layer_id!r} does not exist; the model has layers 0..{len(enc.layers) - 1}")
    return enc.layers[layer_id]


def _ints(values: Iterable[Any], what: str) -> list[int]:
    values = list(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise PruningError(f"{what}: ids must be ints, got {bad[0]!r}")
    return values


def _check_plain(layer: Layer, layer_id: int, names: tuple[str, ...]) -> None:
    for name in names:
        m = getattr(layer, name)
        if type(m) is not nn.Linear:
            raise PruningError(f"layers.{layer_id}.{name} is {type(m).__name__}, not nn.Linear: prune the float "
                               "model, before int8 quantization")


def _slice_heads(layer: Layer, keep: list[int], head_dim: int) -> None:
    """Keep heads at positions ``keep`` of ``layer`` (its current order)."""
    a = layer.num_heads * head_dim
    within = (torch.tensor(keep)[:, None] * head_dim + torch.arange(head_dim)).flatten()  # (kept * head_dim,)
    rows = torch.cat([within + j * a for j in range(3)])  # the same heads' rows of q, k and v
    layer.Wqkv = _slice_linear(layer.Wqkv, rows, dim=0)
    layer.attn_out = _slice_linear(layer.attn_out, within, dim=1)
    for name in ("pos_k", "pos_q"):  # DeBERTa's own projections of the relative embeddings, head-major as q / k
        if getattr(layer, name) is not None:
            setattr(layer, name, _slice_linear(getattr(layer, name), within, dim=0))
    layer.head_ids = [layer.head_ids[j] for j in keep]
    layer.num_heads = len(keep)


def _slice_linear(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A new Linear with rows (dim 0, bias too) or columns (dim 1) ``index`` of ``linear``; same dtype/device."""
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index)
    out = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                                   device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias[index] if dim == 0 else linear.bias)
    for p, old in zip(out.parameters(), linear.parameters(), strict=True):
        p.requires_grad_(old.requires_grad)
    return out.train(linear.training)


# ---- pruning by importance ---------------------------------------------------------------------------
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
    plan, _ = _prune_lowest(model, imp, n_heads, n_neurons)
    return plan


def _count(fraction: float, total: int, n_layers: int, what: str) -> int:
    if not 0 <= fraction < 1:
        raise PruningError(f"{what}_fraction must be in [0, 1), got {fraction}")
    n = math.floor(fraction * total + 0.5)
    if n > total - n_layers:
        raise PruningError(f"{what}_fraction {fraction} asks to prune {n} of {total} {what}s, but each of the "
                           f"{n_layers} layers keeps one: at most {total - n_layers}")
    return n


def _prune_lowest(model: nn.Module, imp: Importance, n_heads: int,
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


def _without(imp: Importance, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> Importance:
    """The scores of the units left after removing positions ``heads`` / ``neurons``."""
    def drop(scores: list[Tensor], gone: dict[int, list[int]]) -> list[Tensor]:
        out = []
        for i, s in enumerate(scores):
            keep = torch.ones(len(s), dtype=torch.bool)
            keep[gone.get(i, [])] = False
            out.append(s[keep.to(s.device)])
        return out
    return Importance(drop(imp.heads, heads), drop(imp.neurons, neurons))


# ---- pruning to a measured speedup -------------------------------------------------------------------
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
        plan, head_pos = _prune_lowest(model, imp, n_heads, n_neurons)
        if scores is not None:
            scores = _without(scores, head_pos, plan.neurons)
        t = measure(model)
        history.append(SpeedupStep(len(history), layer_sizes(enc), base / t))
        log.info("prune step %d: %d heads, %d FFN neurons left, %.2fx", history[-1].step,
                 sum(history[-1].sizes["heads"]), sum(history[-1].sizes["intermediate"]), history[-1].speedup)
    return model, history
