"""Physical pruning: heads, FFN neurons and whole layers removed by slicing the matrices.

Pruned weights are sliced, not masked: a layer that keeps 7 of 12 heads has a ``Wqkv`` of 3 * 7 * head_dim
rows and does 7/12 of the attention work. The config records the new shapes (``pruned_heads``,
``intermediate_sizes``, ``num_hidden_layers``; see ``model/config.py``), so ``save_pretrained`` and
``from_pretrained`` round-trip, for a ``BertModel`` and for a task head (``SequenceClassifier`` /
``TokenClassifier``: their ``.encoder`` is pruned; ``TaskModel.save_pretrained`` then saves it).

**Ids.** Head ids are those of the unpruned layer (0..num_attention_heads-1), as in Hugging Face's
``pruned_heads``, so pruning twice merges; ``Layer.head_ids`` lists the ones a layer keeps. Neuron ids are
positions in the layer's current FFN (a layer keeps no record of its original width).

**Floor.** A layer keeps at least one head and one neuron; remove whole layers with ``drop_layers``.

**Families.** Heads carry their positions along: DeBERTa's per-layer position projections (``pos_k`` / ``pos_q``)
lose the same rows as q, k and v (with ``share_att_key`` they are q and k), MPNet's shared bucket bias and ALiBi's
slopes are looked up by the kept heads' original ids (``Layer.head_ids``). GLU FFNs (ModernBERT) lose a neuron's
gate and up rows together. ``drop_layers`` slices ModernBERT's ``layer_types``; a family whose layer 0 has no
attention norm (``first_layer_attn_norm=False``) keeps the model exact by marking the new first layer as having one
when the family can write that down (bertkit's own ``bert`` layout), and refuses otherwise (ModernBERT: keep layer 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError, ConfigError
from bertkit.model.bert import BertModel, Layer
from bertkit.model.config import EncoderConfig
from bertkit.model.families import hf_config


class PruningError(BertkitError, ValueError):
    """A pruning request that cannot be met. ``history``: the steps (``SpeedupStep``) ``prune_to_speedup``
    took."""

    def __init__(self, message: str, history: list[Any] | None = None) -> None:
        super().__init__(message)
        self.history = history or []


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
