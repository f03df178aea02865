"""Finding the layers to quantize and swapping modules in place: what every quantization step shares.

A model here is a ``TaskModel``, an ``Encoder`` or a bare ``nn.Module`` (``module_of``); layers are named as
in its module tree, and a pattern in ``skip`` / ``keep`` names a module or any path component of one
(``pooler``, ``layers.0.mlp_out``). Every step starts from float ``nn.Linear`` layers and refuses a model that
already has quantized ones (``refuse_quantized``); ``dequantize_model`` goes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bertkit.compress.quantize.modules import QUANTIZED, QuantizedEmbedding, describe_layer, to_linear
from bertkit.compress.quantize.packing import QuantizationError
from bertkit.encoder import Encoder
from bertkit.model.bert import BertModel
from bertkit.task_model import TaskModel

# quantize_weights / prepare_qat: the encoder layers only, by default (a task head's "dense" is RoBERTa's / DeBERTa's
# / ModernBERT's classifier part, as BERT's pooler is)
DEFAULT_SKIP = ("pooler", "classifier", "dense")


def module_of(model: Any) -> nn.Module:
    """The nn.Module a TaskModel / Encoder wraps (the head, or the encoder), or ``model`` itself."""
    if isinstance(model, TaskModel):
        return model.head
    if isinstance(model, Encoder):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected a TaskModel, Encoder or nn.Module, got {type(model).__name__}")


def encoder_of(model: Any) -> nn.Module:
    """The encoder of a TaskModel / Encoder / task head (its layers are what int8 quantizes), else the module."""
    m = module_of(model)
    return m.encoder if isinstance(getattr(m, "encoder", None), BertModel) else m


def matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern names a module or any module path component: "pooler", "layers.0.mlp_out", "classifier"."""
    return any(f".{p}." in f".{name}." for p in patterns)


def refuse_quantized(module: nn.Module, step: str, skip: Iterable[str] = ()) -> None:
    """QuantizationError naming the first quantized layer of ``module`` outside ``skip``, if it has one."""
    skip = tuple(skip)
    for name, m in module.named_modules():
        if isinstance(m, QUANTIZED) and not matches(name, skip):
            raise QuantizationError(f"{step}: layer {name!r} is already quantized ({describe_layer(m)}); "
                                    f"{step} starts from float nn.Linear layers: apply it to the float model")


def float_linears(module: nn.Module, skip: Iterable[str]) -> list[str]:
    """Names of the plain float ``nn.Linear`` layers of ``module`` that no pattern of ``skip`` names."""
    skip = tuple(skip)
    return [n for n, m in module.named_modules() if type(m) is nn.Linear and not matches(n, skip)]


def replace_module(module: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``module``'s submodule ``name`` is."""
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)


@torch.no_grad()
def dequantize_model(model: Any) -> list[str]:
    """Replace every quantized layer by a float ``nn.Linear`` with the weights it stores. Returns the names."""
    module = module_of(model)
    names = [n for n, m in module.named_modules() if isinstance(m, QUANTIZED)]
    for name in names:
        m = module.get_submodule(name)
        if isinstance(m, QuantizedEmbedding):
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx, device="meta")
            emb.weight = nn.Parameter(m.dequantize().contiguous())
            replace_module(module, name, emb)
        else:
            replace_module(module, name, to_linear(m))
    return names
