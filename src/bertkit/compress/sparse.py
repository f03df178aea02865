"""Unstructured pruning: global magnitude and the Optimal BERT Surgeon (oBERT), one-shot or gradual.

What is pruned: the encoder layers' Linear weights (``Wqkv``, ``attn_out``, ``mlp_in``, ``mlp_out``), ranked
globally across all layers. Embeddings, LayerNorms, biases, the pooler and task heads stay dense: they are a
small share of the weights, and the embeddings are a lookup whose zeros save no compute.

Units. A weight W (out, in) is cut into blocks of B consecutive weights along the input dimension (contiguous
runs of a row, what a CPU sparse kernel can skip); B = 1 is plain unstructured pruning. A unit is pruned whole,
so a sparsity is reached exactly up to the nearest unit: round(s * N / B) units of the N weights.

``Masks`` (True = kept) make the zeros stay zero through fine-tuning (``attach``): the gradient of a pruned
weight is masked, every encoder layer re-zeroes its pruned weights before its forward, and, given the
optimizer, weights are re-zeroed right after each optimizer step (AdamW momentum from before the pruning
would otherwise move them). Saved as ``masks.safetensors`` next to a checkpoint, keyed by bertkit's
parameter names (``layers.3.Wqkv.weight``).

oBERT (Kurtic et al. 2022). Second-order pruning with the empirical Fisher F = λI + (1/m) Σ g_i g_iᵀ over m
gradients as the Hessian, restricted to blocks of C consecutive weights (``fisher_block``; C a multiple of B;
block-diagonal F, so F⁻¹ is a batch of C x C inverses, C <= 64 or so). Pruning a set Q of weights of a Fisher
block (OBS, Hassibi & Stork 1993):

    loss increase   ρ_Q = ½ w_Qᵀ (F⁻¹[Q,Q])⁻¹ w_Q          B = 1: ρ_j = w_j² / (2 [F⁻¹]_jj)
    optimal update  δw = -F⁻¹[:, Q] (F⁻¹[Q,Q])⁻¹ w_Q       (δw_Q = -w_Q: the pruned weights become zero)

Units are ranked globally by their own ρ, then each Fisher block gets the joint update for all of its pruned
weights (the new ones and those pruned before, held at zero); its kept weights move to compensate.
C = B means each Fisher block is one unit: ρ = ½ w_Qᵀ F w_Q and nothing is left in the block to update.
λ = ``damp`` x the mean diagonal of the tensor's Fisher (relative damping; scale-free).

Gradual pruning (``GradualPruner``, ``prune_gradually``): the cubic schedule of Zhu & Gupta (2017)
s_t = s_f + (s_i - s_f)(1 - (t - t0) / n)³, pruning every ``prune_every`` optimizer steps from ``start_step`` to
``end_step`` while fine-tuning in between, with the masks fixed after the last pruning step. It runs on the
one training ``Trainer``: the pruner is a per-step callback, and the masks hook the optimizer's step.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertkit.errors import BertkitError, CheckpointError, ConfigError
from bertkit.model.bert import BertModel
from bertkit.utils.atomic import atomic_path

if TYPE_CHECKING:
    from bertkit.data.features import Features
    from bertkit.task_model import TaskModel
    from bertkit.train.engine import Trainer, TrainState

log = logging.getLogger("bertkit")

PRUNABLE = ("Wqkv", "attn_out", "mlp_in", "mlp_out")  # the Linears of each encoder layer that get pruned
MASKS_FILE = "masks.safetensors"
METHODS = ("magnitude", "obert")

LossFn = Callable[[nn.Module, Any], Tensor]


# ---- what is prunable --------------------------------------------------------------------------------------
def find_encoder(model: Any) -> BertModel:
    """The BertModel of ``model``: itself, its ``.encoder`` (task heads, MaskedLM), or a TaskModel's head's."""
    for m in (model, getattr(model, "head", None)):
        if isinstance(m, BertModel):
            return m
        if isinstance(getattr(m, "encoder", None), BertModel):
            return m.encoder
    raise BertkitError(f"no BertModel found in {type(model).__name__}: pass a BertModel, a task head or a TaskModel")


def prunable_weights(model: Any) -> dict[str, nn.Parameter]:
    """name -> weight (out, in) of every prunable Linear, named as in the encoder's state_dict."""
    out = {}
    for i, layer in enumerate(find_encoder(model).layers):
        for name in PRUNABLE:
            linear = getattr(layer, name)
            if type(linear) is not nn.Linear:
                raise BertkitError(f"layers.{i}.{name} is a {type(linear).__name__}, not a Linear: prune before "
                                   "quantizing or converting the model")
            out[f"layers.{i}.{name}.weight"] = linear.weight
    return out


def check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    if not (isinstance(sparsity, int | float) and 0 <= sparsity < 1):
        raise ConfigError(f"{name}={sparsity!r}: must be in [0, 1)")


def check_blocks(model: Any, block_size: int, fisher_block: int | None = None) -> None:
    """Every prunable weight's input dimension must split into whole blocks; fisher_block a multiple of block_size."""
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ConfigError(f"block_size={block_size!r}: must be an integer >= 1")
    sizes = [("block_size", block_size)]
    if fisher_block is not None:
        if not (isinstance(fisher_block, int) and fisher_block >= 1 and fisher_block % block_size == 0):
            raise ConfigError(f"fisher_block={fisher_block!r}: must be a positive multiple of block_size={block_size}")
        sizes.append(("fisher_block", fisher_block))
    for name, w in prunable_weights(model).items():
        for what, b in sizes:
            if w.shape[1] % b:
                raise ConfigError(f"{what}={b} does not divide the input dimension of {name} {tuple(w.shape)}")


# ---- masks -------------------------------------------------------------------------------------------------
class Masks:
    """A bool mask per prunable weight (True = kept), same shape as the weight."""

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = {k: v.bool() for k, v in masks.items()}
        self._handles: list[Any] = []

    @classmethod
    def dense(cls, model: Any) -> Masks:
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()})

    @classmethod
    def from_weights(cls, model: Any) -> Masks:
        """Masks = weights != 0: keeps a loaded sparse model's zeros fixed through further fine-tuning."""
        return cls({n: w.detach() != 0 for n, w in prunable_weights(model).items()})

    def _weights(self, model: Any) -> dict[str, nn.Parameter]:
        weights = prunable_weights(model)
        if set(weights) != set(self.masks):
            extra, missing = sorted(set(self.masks) - set(weights)), sorted(set(weights) - set(self.masks))
            raise CheckpointError(f"masks do not fit this model: masks for missing weights {extra[:3]}, "
                                  f"no masks for {missing[:3]}")
        for n, w in weights.items():
            if tuple(w.shape) != tuple(self.masks[n].shape):
                raise CheckpointError(f"mask '{n}' has shape {tuple(self.masks[n].shape)}, "
                                      f"the weight has {tuple(w.shape)}")
        return weights

    def _mask(self, name: str, device: torch.device) -> Tensor:
        m = self.masks[name]
        if m.device != device:  # the model moved (e.g. the Trainer put it on the GPU): follow it once
            m = self.masks[name] = m.to(device)
        return m

    def apply(self, model: Any) -> None:
        """Zero the pruned weights, in place."""
        with torch.no_grad():
            for n, w in self._weights(model).items():
                w.mul_(self._mask(n, w.device))

    def attach(self, model: Any, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Apply the masks and keep pruned weights at zero through training (until ``detach``).

        Gradients of pruned weights are masked (so clipping and weight decay ignore them), each encoder layer
        re-zeroes its pruned weights before its forward (covers stale optimizer momentum and weights written
        from outside), and with ``optimizer`` the weights are re-zeroed after every step, so that what is
        evaluated or saved between steps is sparse too. The hooks read ``self.masks`` at call time:
        ``update`` changes the masks of an attached model.
        """
        self.detach()
        weights = self._weights(model)
        self.apply(model)
        for n, w in weights.items():
            self._handles.append(w.register_hook(lambda g, n=n: g * self._mask(n, g.device)))
        for i, layer in enumerate(find_encoder(model).layers):
            own = [(n, w) for n, w in weights.items() if n.startswith(f"layers.{i}.")]
            self._handles.append(layer.register_forward_pre_hook(lambda _m, _args, own=own: self._zero(own)))
        if optimizer is not None:
            every = list(weights.items())
            self._handles.append(optimizer.register_step_post_hook(lambda _opt, _args, _kw: self._zero(every)))
        return self

    def _zero(self, weights: list[tuple[str, Tensor]]) -> None:
        with torch.no_grad():
            for n, w in weights:
                w.mul_(self._mask(n, w.device))

    def detach(self) -> None:
        """Remove the hooks of ``attach``; the weights keep their zeros."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def update(self, other: Masks) -> None:
        """Take ``other``'s masks in place (an attached model follows them from its next forward/step)."""
        if set(other.masks) != set(self.masks):
            raise BertkitError("update: the two mask sets name different weights")
        for n, m in other.masks.items():
            self.masks[n] = m.to(self.masks[n].device)

    def sparsity(self) -> dict[str, float]:
        """Share of pruned weights: {"overall": s, "layers.0": s0, ...}."""
        pruned: dict[str, int] = {}
        total: dict[str, int] = {}
        for n, m in self.masks.items():
            layer = ".".join(n.split(".")[:2])
            pruned[layer] = pruned.get(layer, 0) + int((~m).sum())
            total[layer] = total.get(layer, 0) + m.numel()
        out = {"overall": sum(pruned.values()) / max(sum(total.values()), 1)}
        out.update({k: pruned[k] / max(total[k], 1) for k in pruned})
        return out

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/masks.safetensors`` (atomic)."""
        path = Path(directory) / MASKS_FILE
        with atomic_path(path) as tmp:
            save_file({n: m.cpu().contiguous() for n, m in self.masks.items()}, str(tmp),
                      metadata={"format": "bertkit-masks", "sparsity": f"{self.sparsity()['overall']:.6f}"})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Masks:
        """From ``masks.safetensors`` or a directory holding one."""
        p = Path(path)
        if p.is_dir():
            p = p / MASKS_FILE
        if not p.is_file():
            raise CheckpointError(f"{p}: no masks file")
        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: cannot read masks ({e})") from None
        bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
        if bad:
            raise CheckpointError(f"{p}: '{bad[0]}' is {tensors[bad[0]].dtype}, masks are bool")
        return cls(tensors)


# ---- global selection ----------------------------------------------------------------------------------------
def _select(scores: dict[str, Tensor], sparsity: float, block_size: int, current: Masks | None) -> Masks:
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
    return _select(scores, sparsity, block_size, current)


# ---- oBERT ---------------------------------------------------------------------------------------------------
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
    masks = _select(scores, sparsity, block_size, current)
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


# ---- gradual pruning ------------------------------------------------------------------------------------------
def cubic_schedule(step: int, start_step: int, end_step: int, initial_sparsity: float,
                   final_sparsity: float) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - (t - t0) / n)³, n = end - start; s_i before t0, s_f after."""
    if end_step < start_step:
        raise ValueError(f"end_step={end_step} is before start_step={start_step}")
    if step >= end_step:
        return final_sparsity
    if step <= start_step:
        return initial_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** 3


@dataclass
class SparsityConfig:
    method: str = "magnitude"  # magnitude | obert
    sparsity: float = 0.8  # target share of pruned encoder-layer weights, in [0, 1)
    initial_sparsity: float = 0.0  # at start_step (the cubic schedule's s_i)
    block_size: int = 1  # B: consecutive weights of a row pruned together
    fisher_block: int | None = None  # obert: C, weights per Fisher block (None: max(8, block_size))
    steps: int = 1000  # optimizer steps in all
    start_step: int = 0  # first pruning step
    end_step: int | None = None  # last pruning step; None: 3/4 of steps (the last quarter recovers at s_f)
    prune_every: int = 100  # optimizer steps between pruning steps
    lr: float = 3e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # lr schedule: linear | cosine | constant
    fisher_grads: int = 64  # obert: m, gradients per Fisher estimate
    fisher_batch_size: int = 8  # obert: examples per Fisher gradient (1: per-sample gradients)
    damp: float = 1e-7  # obert: λ relative to the mean Fisher diagonal
    eval_every: int | None = None  # optimizer steps; None: at each epoch end
    seed: int = 42
    device: str | None = None
    progress: bool = False

    @property
    def fisher_block_size(self) -> int | None:
        """C for obert (None: max(8, block_size)); None for magnitude, which has no Fisher."""
        if self.method != "obert":
            return None
        return max(8, self.block_size) if self.fisher_block is None else self.fisher_block

    @property
    def last_step(self) -> int:
        return self.end_step if self.end_step is not None else max(self.start_step, (3 * self.steps) // 4)

    def pruning_steps(self) -> list[int]:
        """Steps (optimizer steps done) after which the model is pruned: start, start + every, ..., end."""
        return sorted(set(range(self.start_step, self.last_step, self.prune_every)) | {self.last_step})

    def validate(self) -> None:
        check_sparsity(self.sparsity)
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        if not (isinstance(self.initial_sparsity, int | float) and 0 <= self.initial_sparsity <= self.sparsity):
            raise ConfigError(f"initial_sparsity={self.initial_sparsity!r}: must be in [0, sparsity={self.sparsity}]")
        checks = [
            ("block_size", isinstance(self.block_size, int) and self.block_size >= 1),
            ("fisher_block", self.fisher_block is None or (isinstance(self.fisher_block, int) and self.fisher_block
                                                             >= 1 and self.fisher_block % self.block_size == 0)),
            ("steps", self.steps >= 1), ("start_step", 0 <= self.start_step),
            ("end_step", self.end_step is None or self.start_step <= self.end_step <= self.steps),
            ("prune_every", self.prune_every >= 1), ("lr", self.lr > 0), ("batch_size", self.batch_size >= 1),
            ("fisher_grads", self.fisher_grads >= 1), ("fisher_batch_size", self.fisher_batch_size >= 1),
            ("damp", self.damp > 0), ("eval_every", self.eval_every is None or self.eval_every >= 1),
            ("last pruning step", self.last_step <= self.steps),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ConfigError("invalid sparsity settings: " + ", ".join(
                f"{n}={getattr(self, n)!r}" if hasattr(self, n) else f"{n}={self.last_step} > steps={self.steps}"
                for n in bad))


class GradualPruner:
    """Prunes to ``cubic_schedule`` at ``config.pruning_steps()``; a ``Trainer`` callback (``cb(trainer)`` runs
    after each optimizer step). Masks only grow, and stay fixed after the last pruning step.

    fisher_batches(step) -> batches for one Fisher estimate (obert); loss_fn(model, batch) -> mean loss.
    """

    def __init__(self, config: SparsityConfig, fisher_batches: Callable[[int], Iterable[Any]] | None = None,
                 loss_fn: LossFn | None = None) -> None:
        config.validate()
        if config.method == "obert" and (fisher_batches is None or loss_fn is None):
            raise ConfigError("method=obert needs fisher_batches and loss_fn")
        self.config = config
        self.fisher_batches = fisher_batches
        self.loss_fn = loss_fn
        self.steps = set(config.pruning_steps())
        self.masks: Masks | None = None
        self.history: list[dict[str, float]] = []  # {"step", "target", "sparsity"} per pruning step

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Attach (dense) masks to ``model`` and prune at step 0 when the schedule starts there."""
        check_blocks(model, self.config.block_size, self.config.fisher_block_size)
        self.masks = Masks.dense(model).attach(model, optimizer)
        if 0 in self.steps:
            self.prune(model, 0)
        return self.masks

    def prune(self, model: nn.Module, step: int) -> None:
        cfg = self.config
        if self.masks is None:
            raise BertkitError("GradualPruner.prune before start(model)")
        target = cubic_schedule(step, cfg.start_step, cfg.last_step, cfg.initial_sparsity, cfg.sparsity)
        if cfg.method == "magnitude":
            new = magnitude_masks(model, target, cfg.block_size, current=self.masks)
        else:
            assert self.fisher_batches is not None and self.loss_fn is not None
            new = obert_masks(model, target, self.fisher_batches(step), self.loss_fn, cfg.block_size, cfg.damp,
                              cfg.fisher_grads, cfg.fisher_block_size, current=self.masks)
        self.masks.update(new)
        self.masks.apply(model)
        achieved = self.masks.sparsity()["overall"]
        self.history.append({"step": step, "target": target, "sparsity": achieved})
        log.info("pruned (%s) at step %d: sparsity %.4f (target %.4f)", cfg.method, step, achieved, target)

    def __call__(self, trainer: Trainer) -> None:
        if trainer.state.step in self.steps:
            self.prune(trainer.module, trainer.state.step)


@dataclass
class SparsityResult:
    masks: Masks
    state: TrainState
    history: list[dict[str, float]] = field(default_factory=list)  # per pruning step: step, target, sparsity
    output_dir: Path | None = None


def prune_gradually(task_model: TaskModel, train_features: Features,
                    eval_fn: Callable[[TaskModel], dict[str, float]] | None = None,
                    config: SparsityConfig | None = None,
                    output_dir: str | os.PathLike[str] | None = None) -> SparsityResult:
    """Gradual pruning of a fine-tuned task model on its training data, with the one ``Trainer``.

    Batches and loss as ``finetune`` builds them; eval records carry the sparsity of the moment. The model is
    pruned and trained in place; with ``output_dir`` it is saved there (HF layout + ``masks.safetensors``, next
    to the Trainer's metrics.jsonl, curve and last checkpoint), else the Trainer's files go to a temporary folder
    that is removed. No resume: the Trainer's checkpoints do not carry the masks or the pruner's position.
    Keep-best is off: an early best would be a denser model. The masks come back detached:
    ``masks.attach(model)`` to fine-tune further with the zeros kept.
    """
    from bertkit.data.features import make_batch, shuffled_batches
    from bertkit.train.engine import TrainConfig, Trainer

    cfg = config or SparsityConfig()
    cfg.validate()  # every setting error before any work
    head = task_model.head
    check_blocks(head, cfg.block_size, cfg.fisher_block_size)
    if len(train_features) == 0:
        raise BertkitError("prune_gradually: the training set is empty")
    tcfg = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule, seed=cfg.seed,
                       eval_every=cfg.eval_every, metric="sparsity", greater_is_better=True, progress=cfg.progress,
                       device=cfg.device, keep_checkpoints=1, checkpoint_every=cfg.steps)

    def fisher_batches(step: int) -> Sequence[Any]:
        n = cfg.fisher_grads * cfg.fisher_batch_size  # a fresh random sample of the training set per estimate
        order = np.random.default_rng([cfg.seed, 1, step]).permutation(len(train_features))[:n]
        return [make_batch(train_features, order[i:i + cfg.fisher_batch_size])
                for i in range(0, len(order), cfg.fisher_batch_size)]

    pruner = GradualPruner(cfg, fisher_batches, task_model.loss)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        metrics = dict(eval_fn(task_model)) if eval_fn is not None else {}
        assert pruner.masks is not None
        return {**metrics, "sparsity": pruner.masks.sparsity()["overall"]}

    tmp = None if output_dir is not None else tempfile.TemporaryDirectory(prefix="bertkit-prune-")
    out = Path(output_dir) if output_dir is not None else Path(tmp.name)
    try:
        trainer = Trainer(head, tcfg, batches=lambda epoch: shuffled_batches(train_features, cfg.batch_size,
                                                                             cfg.seed, epoch),
                          loss_fn=task_model.loss, output_dir=out, evaluate=evaluate, callbacks=[pruner],
                          fingerprint={"sparsity": asdict(cfg)})
        masks = pruner.start(trainer.module, trainer.optimizer)
        state = trainer.fit()
        masks.detach()
        masks.apply(head)
    finally:
        if tmp is not None:
            tmp.cleanup()
    head.eval()
    if output_dir is not None:
        task_model.save_pretrained(out)
        masks.save(out)
    return SparsityResult(masks, state, pruner.history, out if output_dir is not None else None)
