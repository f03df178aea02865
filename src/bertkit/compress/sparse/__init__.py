"""Unstructured pruning: global magnitude and the Optimal BERT Surgeon (oBERT), one-shot or gradual.

What is pruned: the encoder layers' Linear weights (``Wqkv``, ``attn_out``, ``mlp_in``, ``mlp_out``), in units of
B consecutive weights of a row, ranked globally across all layers; everything else stays dense.

  masks.py      what is prunable, and ``Masks``, which keep pruned weights at zero through training (saved as
                ``masks.safetensors``)
  selection.py  the global selection of the lowest-scoring units, and magnitude pruning (``magnitude_masks``)
  obert.py      oBERT: block empirical Fisher, OBS scores and weight update (``obert_masks``)
  gradual.py    the cubic schedule while fine-tuning on the Trainer (``SparsityConfig``, ``prune_gradually``)
"""

from bertkit.compress.sparse.gradual import (
    METHODS,
    GradualPruner,
    SparsityConfig,
    SparsityResult,
    cubic_schedule,
    prune_gradually,
)
from bertkit.compress.sparse.masks import (
    MASKS_FILE,
    PRUNABLE,
    Masks,
    check_blocks,
    check_sparsity,
    find_encoder,
    prunable_weights,
)
from bertkit.compress.sparse.obert import (
    LossFn,
    empirical_fisher,
    fisher_inverse,
    obert_masks,
    obert_prune,
    obs_scores,
    obs_update,
)
from bertkit.compress.sparse.selection import magnitude_masks, select_units

__all__ = ["MASKS_FILE", "METHODS", "PRUNABLE", "GradualPruner", "LossFn", "Masks", "SparsityConfig",
           "SparsityResult", "check_blocks", "check_sparsity", "cubic_schedule", "empirical_fisher", "find_encoder",
           "fisher_inverse", "magnitude_masks", "obert_masks", "obert_prune", "obs_scores", "obs_update",
           "prunable_weights", "prune_gradually", "select_units"]
