"""The Optimal BERT Surgeon (oBERT, Kurtic et al. 2022): second-order pruning with an empirical Fisher.

The empirical Fisher F = λI + (1/m) Σ g_i g_iᵀ over m gradients stands in for the Hessian, restricted to blocks
of C consecutive weights (``fisher_block``; C a multiple of B; block-diagonal F, so F⁻¹ is a batch of C x C
inverses, C <= 64 or so). Pruning a set Q of weights of a Fisher block (OBS, Hassibi & Stork 1993):

    loss increase   ρ_Q = ½ w_Qᵀ (F⁻¹[Q,Q])⁻¹ w_Q          B = 1: ρ_j = w_j² / (2 [F⁻¹]_jj)
    optimal update  δw = -F⁻¹[:, Q] (F⁻¹[Q,Q])⁻¹ w_Q       (δw_Q = -w_Q: the pruned weights become zero)

Units are ranked globally by their own ρ, then each Fisher block gets the joint update for all of its pruned
weights (the new ones and those pruned before, held at zero); its kept weights move to compensate.
C = B means each Fisher block is one unit: ρ = ½ w_Qᵀ F w_Q and nothing is left in the block to update.
λ = ``damp`` x the mean diagonal of the tensor's Fisher (relative damping; scale-free).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.compress.sparse.masks import Masks, check_blocks, check_sparsity, prunable_weights
from bertkit.compress.sparse.selection import select_units
from bertkit.errors import BertkitError, ConfigError

log = logging.getLogger("bertkit")

LossFn = Callable[[nn.Module, Any], Tensor]


def empirical_fisher(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, fisher_block: int = 8,
                     num_grads: int | None = None) -> dict[str, Tensor]:
    """Block-diagonal empirical Fisher (1/m) Σ g gᵀ of each prunable weight, from one gradient per batch.

    name -> (out * in / C, C, C) float32, block r = weights r*C .. r*C+C-1 of the row-major weight.
    ``loss_fn(model, batch)`` is the mean loss of a batch; batches of one example give per-sample gradients.
    Runs in eval mode (no dropout); ``.grad`` of the parameters is left untouched.
    """
    check_blocks(model, 1, fisher_block)
    weights = prunable_weights(model)
    device = next(iter(weights.values())).device
    fisher = {n: torch.zeros(w.numel() // fisher_block, fisher_block, fisher_block, device=w.device)
              for n, w in weights.items()}
    frozen = [w for w in weights.values() if not w.requires_grad]
    was_training = model.training
    model.eval()
    for w in frozen:  # frozen layers are pruned too: their gradients are needed all the same
        w.requires_grad_(True)
    m = 0
    try:
        for batch in batches:
            if num_grads is not None and m >= num_grads:
                break
            loss = loss_fn(model, batch.to(device) if hasattr(batch, "to") else batch)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for (n, _), g in zip(weights.items(), grads, strict=True):
                if g is not None:
                    gb = g.detach().float().reshape(-1, fisher_block, 1)  # (blocks, C, 1)
                    fisher[n].baddbmm_(gb, gb.transpose(1, 2))  # += g gᵀ per block, no (blocks, C, C) temporary
            m += 1
    finally:
        for w in frozen:
            w.requires_grad_(False)
        model.train(was_training)
    if m == 0:
        raise BertkitError("no batches to estimate the Fisher from")
    if num_grads is not None and m < num_grads:
        log.warning("oBERT: only %d of the %d Fisher gradients asked for (not enough batches)", m, num_grads)
    for f in fisher.values():
        f /= m
    return fisher


def fisher_inverse(fisher: Tensor, damp: float = 1e-7) -> Tensor:
    """(F + λI)⁻¹ of each block, float64: (blocks, C, C) -> (blocks, C, C); λ = damp x mean diag of ``fisher``."""
    diag = fisher.diagonal(dim1=-2, dim2=-1)
    scale = float(diag.double().mean()) if diag.numel() else 0.0
    lam = damp * scale if scale > 0 else damp  # an all-zero Fisher (no gradient reaches it): plain λI
    eye = torch.eye(fisher.shape[-1], dtype=torch.float64, device=fisher.device)
    return torch.linalg.inv(fisher.double() + lam * eye)


def obs_scores(weight: Tensor, finv: Tensor, block_size: int) -> Tensor:
    """OBS loss increase of pruning each unit alone: ρ_Q = ½ w_Qᵀ (F⁻¹[Q,Q])⁻¹ w_Q.

    weight (out, in), finv (out * in / C, C, C) -> (out, in / B) float64.
    """
    n, c = finv.shape[:2]
    k = c // block_size
    wb = weight.detach().double().reshape(n, k, block_size)  # (blocks, k units, B)
    sub = finv.view(n, k, block_size, k, block_size).diagonal(dim1=1, dim2=3)  # (blocks, B, B, k)
    sub = sub.permute(0, 3, 1, 2)  # (blocks, k, B, B): F⁻¹[Q,Q] of each unit
    if block_size == 1:
        rho = wb.squeeze(-1) ** 2 / (2 * sub[..., 0, 0])
    else:
        rho = 0.5 * (wb * torch.linalg.solve(sub, wb.unsqueeze(-1)).squeeze(-1)).sum(-1)
    return rho.reshape(weight.shape[0], -1)


def obs_update(weight: Tensor, finv: Tensor, pruned: Tensor) -> Tensor:
    """Weights after pruning ``pruned`` (bool, (out, in)) with the joint OBS update within each Fisher block.

    δw = -F⁻¹[:, Q] (F⁻¹[Q,Q])⁻¹ w_Q with Q the pruned weights of the block. The variable-size Q is batched as
    one C x C solve: M = P F⁻¹ P + (I - P) (P = diag(pruned)) has M[Q,Q] = F⁻¹[Q,Q] and identity elsewhere, so
    x = M⁻¹ P w is (F⁻¹[Q,Q])⁻¹ w_Q on Q and 0 off it, and δw = -F⁻¹ x. Returns (out, in) in weight's dtype.
    """
    n, c = finv.shape[:2]
    w = weight.detach().double().reshape(n, c)  # (blocks, C)
    p = pruned.reshape(n, c).to(w.device)
    rows = p.any(dim=1).nonzero().squeeze(1)  # only blocks that lose a weight change
    pr, fi = p[rows].double(), finv[rows]  # (n, C), (n, C, C)
    m = pr.unsqueeze(2) * fi * pr.unsqueeze(1) + torch.diag_embed(1 - pr)  # P F⁻¹ P + (I - P)
    x = torch.linalg.solve(m, (pr * w[rows]).unsqueeze(-1))  # (n, C, 1)
    out = w.clone()
    out[rows] -= (fi @ x).squeeze(-1)
    out[p] = 0.0  # exactly zero (the update gives -w_Q up to rounding)
    return out.reshape(weight.shape).to(weight.dtype)


def obert_prune(model: Any, sparsity: float, fisher: dict[str, Tensor], block_size: int = 4, damp: float = 1e-7,
                current: Masks | None = None, update: bool = True) -> Masks:
    """oBERT masks from a block Fisher (``empirical_fisher``); with ``update`` the weights get the OBS update and
    the pruned ones are zeroed, in place. See the module docstring for the formulas.

    Memory: one tensor's F⁻¹ at a time, float64 (8 x C bytes per weight: 150 MB for BERT-base's mlp_in, C = 8).
    """
    check_sparsity(sparsity)
    weights = prunable_weights(model)
    if set(fisher) != set(weights):
        raise BertkitError("the Fisher does not name this model's prunable weights")
    c = {f.shape[-1] for f in fisher.values()}
    if len(c) != 1:
        raise BertkitError(f"Fisher blocks of several sizes: {sorted(c)}")
    check_blocks(model, block_size, c.pop())
    # The inverses are computed twice (score, then update) rather than held for every tensor at once.
    scores = {n: obs_scores(w, fisher_inverse(fisher[n], damp), block_size) for n, w in weights.items()}
    masks = select_units(scores, sparsity, block_size, current)
    if update:
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(obs_update(w, fisher_inverse(fisher[n], damp), ~masks.masks[n]))
    return masks


def obert_masks(model: nn.Module, sparsity: float, fisher_batches: Iterable[Any], loss_fn: LossFn,
                block_size: int = 4, damp: float = 1e-7, num_grads: int | None = None,
                fisher_block: int | None = None, current: Masks | None = None, update: bool = True) -> Masks:
    """Optimal BERT Surgeon, one shot: Fisher from ``fisher_batches`` -> ranking -> masks (+ OBS weight update).

    model: what ``loss_fn(model, batch)`` takes (a task head, a MaskedLM); its encoder is pruned.
    fisher_block: C, weights per Fisher block, a multiple of ``block_size`` (default max(8, B)); C = B makes
    each block one unit (ρ = ½ w_Qᵀ F w_Q, no update left to do). num_grads: m, at most this many batches
    (one gradient each); m should be several times C or the 1/m Σ g gᵀ blocks are rank-deficient.
    damp: λ relative to the mean Fisher diagonal of each tensor.
    The weights are changed in place when ``update``: kept ones get the OBS update, pruned ones are zeroed.
    """
    check_sparsity(sparsity)
    fisher_block = max(8, block_size) if fisher_block is None else fisher_block
    check_blocks(model, block_size, fisher_block)
    if not damp > 0:
        raise ConfigError(f"damp={damp!r}: must be > 0")
    if num_grads is not None and num_grads < 1:
        raise ConfigError(f"num_grads={num_grads!r}: must be >= 1")
    fisher = empirical_fisher(model, fisher_batches, loss_fn, fisher_block, num_grads)
    return obert_prune(model, sparsity, fisher, block_size, damp, current, update)
