"""What is prunable, and the masks that keep pruned weights at zero.

What is pruned: the encoder layers' Linear weights (``Wqkv``, ``attn_out``, ``mlp_in``, ``mlp_out``), ranked
globally across all layers. Embeddings, LayerNorms, biases, the pooler and task heads stay dense: they are a
small share of the weights, and the embeddings are a lookup whose zeros save no compute.

``Masks`` (True = kept) make the zeros stay zero through fine-tuning (``attach``): the gradient of a pruned
weight is masked, every encoder layer re-zeroes its pruned weights before its forward, and, given the
optimizer, weights are re-zeroed right after each optimizer step (AdamW momentum from before the pruning
would otherwise move them). Saved as ``masks.safetensors`` next to a checkpoint, keyed by bertkit's
parameter names (``layers.3.Wqkv.weight``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertkit.errors import BertkitError, CheckpointError, ConfigError
from bertkit.model.bert import BertModel
from bertkit.utils.atomic import atomic_path

PRUNABLE = ("Wqkv", "attn_out", "mlp_in", "mlp_out")  # the Linears of each encoder layer that get pruned
MASKS_FILE = "masks.safetensors"


def find_encoder(model: Any) -> BertModel:
    """The BertModel of ``model``: itself, its ``.encoder`` (task heads, MaskedLM), or a TaskModel's head's."""
    for m in (model, getattr(model, "head", None)):
        if isinstance(m, BertModel):
            return m
        if isinstance(getattr(m, "encoder", None), BertModel):
            return m.encoder
    raise BertkitError(f"no BertModel found in {type(model).__name__}: pass a BertModel, a task head or a TaskModel")


def prunable_weights(model: Any) -> dict[str, nn.Parameter]:
    """name -> weight (out, in) of every prunable Linear, named as in the encoder's state_dict."""
    out = {}
    for i, layer in enumerate(find_encoder(model).layers):
        for name in PRUNABLE:
            linear = getattr(layer, name)
            if type(linear) is not nn.Linear:
                raise BertkitError(f"layers.{i}.{name} is a {type(linear).__name__}, not a Linear: prune before "
                                   "quantizing or converting the model")
            out[f"layers.{i}.{name}.weight"] = linear.weight
    return out


def check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    if not (isinstance(sparsity, int | float) and 0 <= sparsity < 1):
        raise ConfigError(f"{name}={sparsity!r}: must be in [0, 1)")


def check_blocks(model: Any, block_size: int, fisher_block: int | None = None) -> None:
    """Every prunable weight's input dimension must split into whole blocks; fisher_block a multiple of block_size."""
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ConfigError(f"block_size={block_size!r}: must be an integer >= 1")
    sizes = [("block_size", block_size)]
    if fisher_block is not None:
        if not (isinstance(fisher_block, int) and fisher_block >= 1 and fisher_block % block_size == 0):
            raise ConfigError(f"fisher_block={fisher_block!r}: must be a positive multiple of block_size={block_size}")
        sizes.append(("fisher_block", fisher_block))
    for name, w in prunable_weights(model).items():
        for what, b in sizes:
            if w.shape[1] % b:
                raise ConfigError(f"{what}={b} does not divide the input dimension of {name} {tuple(w.shape)}")


class Masks:
    """A bool mask per prunable weight (True = kept), same shape as the weight."""

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = {k: v.bool() for k, v in masks.items()}
        self._handles: list[Any] = []

    @classmethod
    def dense(cls, model: Any) -> Masks:
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()})

    @classmethod
    def from_weights(cls, model: Any) -> Masks:
        """Masks = weights != 0: keeps a loaded sparse model's zeros fixed through further fine-tuning."""
        return cls({n: w.detach() != 0 for n, w in prunable_weights(model).items()})

    def _weights(self, model: Any) -> dict[str, nn.Parameter]:
        weights = prunable_weights(model)
        if set(weights) != set(self.masks):
            extra, missing = sorted(set(self.masks) - set(weights)), sorted(set(weights) - set(self.masks))
            raise CheckpointError(f"masks do not fit this model: masks for missing weights {extra[:3]}, "
                                  f"no masks for {missing[:3]}")
        for n, w in weights.items():
            if tuple(w.shape) != tuple(self.masks[n].shape):
                raise CheckpointError(f"mask '{n}' has shape {tuple(self.masks[n].shape)}, "
                                      f"the weight has {tuple(w.shape)}")
        return weights

    def _mask(self, name: str, device: torch.device) -> Tensor:
        m = self.masks[name]
        if m.device != device:  # the model moved (e.g. the Trainer put it on the GPU): follow it once
            m = self.masks[name] = m.to(device)
        return m

    def apply(self, model: Any) -> None:
        """Zero the pruned weights, in place."""
        with torch.no_grad():
            for n, w in self._weights(model).items():
                w.mul_(self._mask(n, w.device))

    def attach(self, model: Any, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Apply the masks and keep pruned weights at zero through training (until ``detach``).

        Gradients of pruned weights are masked (so clipping and weight decay ignore them), each encoder layer
        re-zeroes its pruned weights before its forward (covers stale optimizer momentum and weights written
        from outside), and with ``optimizer`` the weights are re-zeroed after every step, so that what is
        evaluated or saved between steps is sparse too. The hooks read ``self.masks`` at call time:
        ``update`` changes the masks of an attached model.
        """
        self.detach()
        weights = self._weights(model)
        self.apply(model)
        for n, w in weights.items():
            self._handles.append(w.register_hook(lambda g, n=n: g * self._mask(n, g.device)))
        for i, layer in enumerate(find_encoder(model).layers):
            own = [(n, w) for n, w in weights.items() if n.startswith(f"layers.{i}.")]
            self._handles.append(layer.register_forward_pre_hook(lambda _m, _args, own=own: self._zero(own)))
        if optimizer is not None:
            every = list(weights.items())
            self._handles.append(optimizer.register_step_post_hook(lambda _opt, _args, _kw: self._zero(every)))
        return self

    def _zero(self, weights: list[tuple[str, Tensor]]) -> None:
        with torch.no_grad():
            for n, w in weights:
                w.mul_(self._mask(n, w.device))

    def detach(self) -> None:
        """Remove the hooks of ``attach``; the weights keep their zeros."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def update(self, other: Masks) -> None:
        """Take ``other``'s masks in place (an attached model follows them from its next forward/step)."""
        if set(other.masks) != set(self.masks):
            raise BertkitError("update: the two mask sets name different weights")
        for n, m in other.masks.items():
            self.masks[n] = m.to(self.masks[n].device)

    def sparsity(self) -> dict[str, float]:
        """Share of pruned weights: {"overall": s, "layers.0": s0, ...}."""
        pruned: dict[str, int] = {}
        total: dict[str, int] = {}
        for n, m in self.masks.items():
            layer = ".".join(n.split(".")[:2])
            pruned[layer] = pruned.get(layer, 0) + int((~m).sum())
            total[layer] = total.get(layer, 0) + m.numel()
        out = {"overall": sum(pruned.values()) / max(sum(total.values()), 1)}
        out.update({k: pruned[k] / max(total[k], 1) for k in pruned})
        return out

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/masks.safetensors`` (atomic)."""
        path = Path(directory) / MASKS_FILE
        with atomic_path(path) as tmp:
            save_file({n: m.cpu().contiguous() for n, m in self.masks.items()}, str(tmp),
                      metadata={"format": "bertkit-masks", "sparsity": f"{self.sparsity()['overall']:.6f}"})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Masks:
        """From ``masks.safetensors`` or a directory holding one."""
        p = Path(path)
        if p.is_dir():
            p = p / MASKS_FILE
        if not p.is_file():
            raise CheckpointError(f"{p}: no masks file")
        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: cannot read masks ({e})") from None
        bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
        if bad:
            raise CheckpointError(f"{p}: '{bad[0]}' is {tensors[bad[0]].dtype}, masks are bool")
        return cls(tensors)
