"""Structured pruning: remove attention heads, FFN neurons and whole layers, with physically smaller matrices.

  surgery.py     slicing heads, neurons and layers out of the model, the config following (``prune_heads``,
                 ``prune_neurons``, ``drop_layers``)
  importance.py  first-order Taylor importance of every head and neuron (``taylor_importance``)
  selection.py   pruning the least important fractions, ranked globally (``prune_by_importance``)
  speedup.py     pruning step by step until the measured latency reaches a target (``prune_to_speedup``)

Prune after training, or build the optimizer again: sliced layers are new ``nn.Linear`` modules. Prune the
float model: int8 layers (``inference/int8.py``) are refused.
"""

from bertkit.compress.structured.importance import (
    Importance,
    ImportanceSource,
    LossFn,
    head_importance,
    neuron_importance,
    taylor_importance,
)
from bertkit.compress.structured.selection import PrunePlan, prune_by_importance, prune_lowest
from bertkit.compress.structured.speedup import SpeedupStep, latency_measure, prune_to_speedup
from bertkit.compress.structured.surgery import (
    PruningError,
    check_first_layer,
    drop_layers,
    encoder_of,
    layer_sizes,
    prune_heads,
    prune_neurons,
)

__all__ = ["Importance", "ImportanceSource", "LossFn", "PrunePlan", "PruningError", "SpeedupStep",
           "check_first_layer", "drop_layers", "encoder_of", "head_importance", "latency_measure", "layer_sizes",
           "neuron_importance", "prune_by_importance", "prune_heads", "prune_lowest", "prune_neurons",
           "prune_to_speedup", "taylor_importance"]
