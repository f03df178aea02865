"""Which units to prune: the global selection by score both methods share, and magnitude pruning.

Units. A weight W (out, in) is cut into blocks of B consecutive weights along the input dimension (contiguous
runs of a row, what a CPU sparse kernel can skip); B = 1 is plain unstructured pruning. A unit is pruned whole,
so a sparsity is reached exactly up to the nearest unit: round(s * N / B) units of the N weights, ranked
globally across all layers (``select_units``). Magnitude pruning scores a unit by its L2 norm; oBERT by its
loss increase (``obert.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bertkit.compress.sparse.masks import Masks, check_blocks, check_sparsity, prunable_weights


def select_units(scores: dict[str, Tensor], sparsity: float, block_size: int, current: Masks | None) -> Masks:
    """Prune the round(sparsity * units) lowest-scoring units over all tensors. scores: name -> (out, in / B).

    Units already fully pruned in ``current`` go first, so gradual pruning only ever adds zeros.
    """
    names = list(scores)
    flat = []
    for n in names:
        s = scores[n].detach().double().cpu().flatten()
        if current is not None:
            old = ~current.masks[n].cpu().reshape(s.numel(), block_size).any(dim=1)  # unit fully pruned
            s = s.masked_fill(old, -math.inf)
        flat.append(s)
    allscores = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)
    k = round(sparsity * allscores.numel())
    prune = torch.zeros(allscores.numel(), dtype=torch.bool)
    prune[torch.argsort(allscores, stable=True)[:k]] = True  # by index, not a threshold: exact even with ties
    masks, start = {}, 0
    for n, s in zip(names, flat, strict=True):
        unit = prune[start:start + s.numel()].reshape(scores[n].shape)
        masks[n] = (~unit).repeat_interleave(block_size, dim=1).to(scores[n].device)  # (out, in)
        start += s.numel()
    return Masks(masks)


def magnitude_masks(model: Any, sparsity: float, block_size: int = 1, current: Masks | None = None) -> Masks:
    """Global magnitude pruning: units (B consecutive weights of a row) ranked by L2 norm across all layers.

    Returns masks only; ``masks.apply(model)`` zeroes the weights. ``current``: masks already in force
    (their units stay pruned).
    """
    check_sparsity(sparsity)
    check_blocks(model, block_size)
    scores = {n: w.detach().double().reshape(w.shape[0], -1, block_size).norm(dim=-1)  # (out, in / B)
              for n, w in prunable_weights(model).items()}
    return select_units(scores, sparsity, block_size, current)
