"""Dropout whose mask costs a third of ``F.dropout``'s on CPU.

On CPU, ``F.dropout`` draws one Bernoulli sample per element (about 6 ns each here: 180 ms of a
1.2 s MiniLM training step). We draw 64 random bits at a time instead and read them as four 16-bit
lanes, keeping an element when its lane is at or above ``p * 65536`` (so p is exact to 1.5e-5).
Same semantics as ``F.dropout`` (inverted scaling by 1 / (1 - p)); same generator (torch's default),
so a checkpointed RNG state reproduces the masks. On CUDA ``F.dropout``'s fused kernel is used.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("bertkit")
_logged = False


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training=True)
    global _logged
    if not _logged:
        log.info("dropout: 16-bit threshold masks from 64-bit random words (CPU)")
        _logged = True
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    keep = lanes >= round(p * 65536) - 32768
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (no parameters, so state dicts are unchanged)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
