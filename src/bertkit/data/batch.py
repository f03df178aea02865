"""What every training batch shares: sequences packed back to back, and one way to move a batch to a device.

A trainer's batch is a dataclass of tensors (``(total_tokens,)`` ids, labels, ...), ``Packing``s and plain numbers
that subclasses ``DeviceBatch``: ``to(device)`` moves every tensor and packing field, whatever the fields are, so
no batch type writes its own. ``pack`` is the one packer: token lists -> ``(total_tokens,)`` ids and their Packing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Self

import torch
from torch import Tensor

from bertkit.model.attention import Packing


class DeviceBatch:
    """Mixin for a dataclass batch: ``to(device)`` moves its Tensor and Packing fields (None stays None)."""

    num_tokens: int  # tokens the encoder runs on (throughput)
    num_units: int  # what the loss averages over (examples, pairs, groups, masked tokens)

    def to(self, device: torch.device) -> Self:
        moved = {f.name: _move(getattr(self, f.name), device) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if all(moved[k] is getattr(self, k) for k in moved):
            return self  # already there: no copy
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]


def _move(value: object, device: torch.device) -> object:
    if isinstance(value, Tensor | Packing):
        return value if value.device == torch.device(device) else value.to(device)  # type: ignore[union-attr]
    return value


def pack(seqs: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None,
         device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Packing]:
    """Token lists back to back: ids (total_tokens,), type ids (total_tokens,; zeros when None), their Packing."""
    ids = torch.tensor([t for x in seqs for t in x], dtype=torch.long)
    types = (torch.zeros_like(ids) if type_ids is None
             else torch.tensor([t for x in type_ids for t in x], dtype=torch.long))
    return ids.to(device), types.to(device), Packing.from_lengths([len(x) for x in seqs], device=device)
