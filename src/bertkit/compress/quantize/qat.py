"""Quantization-aware fine-tuning: fake-quantized Linears in, weight-only Linears on the trained grid out.

``prepare_qat`` swaps Linears for ``FakeQuantLinear`` (weights, and optionally activations, rounded in
forward; straight-through gradients), training runs on the usual ``train/trainer.py`` Trainer, and
``convert_qat`` turns them into ``WeightOnlyLinear`` on the trained grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from bertkit.compress.quantize.modules import FakeQuantLinear, WeightOnlyLinear, to_linear
from bertkit.compress.quantize.packing import QuantizationError
from bertkit.compress.quantize.swap import DEFAULT_SKIP, float_linears, module_of, refuse_quantized, replace_module

log = logging.getLogger("bertkit")


def prepare_qat(model: Any, bits: int = 8, group_size: int | None = None, act_bits: int | None = None,
                skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Swap the float Linears (as ``quantize_weights`` picks them) for ``FakeQuantLinear``, in place, sharing
    their Parameters. group_size None: one scale per output channel. Returns the names."""
    module = module_of(model)
    refuse_quantized(module, f"prepare_qat(bits={bits})", skip)
    names = float_linears(module, skip)
    for name in names:
        fake = FakeQuantLinear.from_linear(module.get_submodule(name), bits, group_size, act_bits)
        replace_module(module, name, fake)
    log.info("QAT: %d linear layers fake-quantized to int%d%s", len(names), bits,
             f", activations int{act_bits} per token" if act_bits else "")
    return names


@torch.no_grad()
def convert_qat(model: Any, dequantize: bool = False) -> list[str]:
    """Replace each ``FakeQuantLinear`` by the ``WeightOnlyLinear`` it trained for (same bits and groups, fp16
    scales), or with ``dequantize`` by an ``nn.Linear`` holding its grid values. Activation fake-quant is
    dropped (for int8 activations, convert with ``dequantize=True`` and then ``quantize_dynamic``)."""
    module = module_of(model)
    names = [n for n, m in module.named_modules() if isinstance(m, FakeQuantLinear)]
    if not names:
        raise QuantizationError("convert_qat: the model has no FakeQuantLinear layers; call prepare_qat first")
    for name in names:
        m = module.get_submodule(name)
        new = to_linear(m) if dequantize else WeightOnlyLinear.from_linear(m, m.bits, m.group_size)
        replace_module(module, name, new)
    return names
