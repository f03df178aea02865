"""Activation ranges for int8: the calibration texts and the one calibrator every int8 path uses.

``activation_maxima`` records the per-input-channel max |x| of named Linear layers while a forward runs over
calibration batches. Dynamic int8 turns those maxima into SmoothQuant smoothing factors
(``inference/int8.smoothing_maxima``), static int8 into fixed activation scales (``compress/quantize/static.py``).
The batches are any iterable (the engine's ``Engine.text_batches`` of the built-in texts, a task model's
features, ...), consumed once, and ``forward(batch)`` runs the model on one of them.

The maxima are recorded by forward hooks on the layers themselves: the encoder calls a Linear that has hooks as
a module (``model/bert._add_linear_``), so layers it otherwise adds into the residual with its own GEMM
(``attn_out``, ``mlp_out``) are seen too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

B = TypeVar("B")

CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")


def calibration_texts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Texts whose activation maxima set the smoothing factors: ``path`` (one per line) or the built-in
    set of 62 mixed-domain English sentences."""
    p = Path(path) if path is not None else CALIBRATION_FILE
    texts = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise ValueError(f"{p}: no calibration texts (one per line)")
    return texts


@torch.no_grad()
def activation_maxima(module: nn.Module, names: Iterable[str], batches: Iterable[B],
                      forward: Callable[[B], object]) -> dict[str, Tensor]:
    """Per-input-channel max |x| (in,) fp32 of each named Linear of ``module`` over ``forward(batch)`` for every
    batch of ``batches``; a layer no forward reached is absent."""
    stats: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a

        hooks.append(module.get_submodule(name).register_forward_hook(hook))
    try:
        for batch in batches:
            forward(batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def calibrate(module: nn.Module, run: Callable[[], object], names: Iterable[str]) -> dict[str, Tensor]:
    """``activation_maxima`` over one call of ``run()``, which feeds the model its calibration batches itself
    (the form ``benchmarks/inference_engine.py`` uses)."""
    return activation_maxima(module, names, [None], lambda _: run())
