"""Weight-only, group-wise quantization of Linears and embedding tables (Q-BERT, Shen et al. 2020).

``quantize_weights`` gives each Linear weight (out, in) one symmetric scale per group of ``group_size``
consecutive input columns of each output row, at 8 or 4 bits (4-bit values packed two a byte).
``WeightOnlyLinear`` dequantizes the whole weight on every forward and runs ``F.linear``: correct, small at
rest, *slower* than ``nn.Linear`` — a storage format, not the fast path (``dequantize_model`` turns it back
into float Linears once, at load). Rounding alone (no QAT) on all-MiniLM-L6-v2, worst / mean cosine of 264
held-out embeddings to fp32: int8 g128 0.9996 / 0.9998; int4 g128 0.891 / 0.935, g64 0.914 / 0.948,
g32 0.931 / 0.958. ``quantize_embeddings`` does the same to the word and position tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bertkit.compress.quantize.modules import QuantizedEmbedding, WeightOnlyLinear, describe_layer
from bertkit.compress.quantize.packing import QuantizationError, qmax
from bertkit.compress.quantize.swap import DEFAULT_SKIP, float_linears, module_of, refuse_quantized, replace_module

log = logging.getLogger("bertkit")

SCALE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@torch.no_grad()
def quantize_weights(model: Any, bits: int = 8, group_size: int = 128, skip: Iterable[str] = DEFAULT_SKIP,
                     scale_dtype: str = "fp16") -> list[str]:
    """Replace each float ``nn.Linear`` of ``model`` (TaskModel, Encoder or nn.Module) whose name matches no
    entry of ``skip`` by a ``WeightOnlyLinear`` at ``bits`` (8 or 4), in place. Returns the names replaced.

    By default the encoder layers' Linears (Wqkv, attn_out, mlp_in, mlp_out); ``skip=()`` takes the pooler
    and classifier too. Refuses a model that already has quantized layers, naming the first.
    """
    qmax(bits)
    if scale_dtype not in SCALE_DTYPES:
        raise QuantizationError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
    module = module_of(model)
    step = f"quantize_weights(bits={bits})"
    refuse_quantized(module, step, skip)
    names = float_linears(module, skip)
    for name in names:
        lin = module.get_submodule(name)
        if bits == 4 and lin.in_features % 2:
            raise QuantizationError(f"{step}: layer {name!r} has {lin.in_features} input features; int4 packs "
                                    "two a byte and needs an even number (skip the layer)")
    for name in names:
        lin = module.get_submodule(name)
        replace_module(module, name, WeightOnlyLinear.from_linear(lin, bits, group_size, SCALE_DTYPES[scale_dtype]))
    log.info("weight-only int%d: %d linear layers quantized (groups of %d input columns, %s scales)", bits,
             len(names), group_size, scale_dtype)
    return names


@torch.no_grad()
def quantize_embeddings(model: Any, bits: int = 8, group_size: int = 128, scale_dtype: str = "fp16") -> list[str]:
    """Replace the word and position tables (``embeddings.word``, ``embeddings.position`` when the model has
    one) by ``QuantizedEmbedding`` at ``bits``, in place. The token-type table (2 rows) stays float. Refuses an
    already quantized table. Returns the names replaced."""
    qmax(bits)
    if scale_dtype not in SCALE_DTYPES:
        raise QuantizationError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
    module = module_of(model)
    names = [n for n, m in module.named_modules()
             if n.rpartition(".")[2] in ("word", "position") and n.rpartition(".")[0].endswith("embeddings")
             and isinstance(m, nn.Embedding | QuantizedEmbedding)]
    if not names:
        raise QuantizationError("quantize_embeddings: the model has no 'embeddings.word' table")
    for name in names:
        emb = module.get_submodule(name)
        if isinstance(emb, QuantizedEmbedding):
            raise QuantizationError(f"quantize_embeddings(bits={bits}): {name!r} is already quantized "
                                    f"({describe_layer(emb)})")
    for name in names:
        emb = module.get_submodule(name)
        table = QuantizedEmbedding.from_embedding(emb, bits, group_size, SCALE_DTYPES[scale_dtype])
        replace_module(module, name, table)
        log.info("embeddings int%d: %s (%d x %d) quantized in groups of %d", bits, name, emb.num_embeddings,
                 emb.embedding_dim, group_size)
    return names
