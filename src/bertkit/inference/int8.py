"""int8 linear layers for inference: int8 x int8 -> int32 GEMMs (VNNI on CPU) with outlier-aware scales.

Naive int8 (one scale per activation tensor, as ``torch.ao`` dynamic quantization and onnxruntime's
``quantize_dynamic`` do) breaks BERT-family encoders: a few hidden dimensions carry activations 10-100x
larger than the rest ("Quantizable Transformers", Bondarenko et al. 2023), so one tensor-wide scale
rounds every other dimension to a handful of levels. Here:

- **weights**: one scale per output channel (row), symmetric, stored as int8;
- **activations**: one scale per token (row of ``x``), computed on the fly, so a token's scale follows
  its own largest value and not the batch's;
- **smoothing** (SmoothQuant, Xiao et al. 2023): per input channel ``j`` the activation is divided and
  the weight column multiplied by ``s_j = max|x_j|^a / max|W_j|^(1-a)``, moving the outlier dimensions'
  range from activations into weights; needs activation maxima from calibration texts (``calibrate``).
  ``quantize_encoder`` smooths the layers fed by a LayerNorm (``Wqkv``, ``mlp_in``: ``SMOOTHED``), as the
  paper does; the factor is applied to ``x`` at run time (one multiply), because in post-norm BERT the
  LayerNorm output is also the residual stream and cannot absorb it;
- layers named in ``keep`` stay in floating point (see README for which ones measured worth keeping).

``Int8Linear.forward``: x (..., in) float -> (..., out) float, through ``torch._int_mm`` on (tokens, in) int8.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.inference.engine import Engine
    from bertkit.model.bert import BertModel

log = logging.getLogger("bertkit")

QMAX = 127.0


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, smooth: Tensor | None = None) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        if smooth is not None:
            smooth = smooth.float().clamp_min(1e-5)
            w = w * smooth[None, :]
            self.register_buffer("inv_smooth", (1.0 / smooth).contiguous())
        else:
            self.inv_smooth = None
        scale = w.abs().amax(dim=1).clamp_min(1e-8) / QMAX  # (out,)
        q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        scale = scale / QMAX  # folds the activations' 1/127 in: y = acc * amax_row * scale_col
        # _int_mm takes (M, K) @ (K, N); keep the weight as the transpose of a contiguous (out, in) block.
        self.register_buffer("weight_t", q.t().contiguous())  # (in, out) int8
        self.register_buffer("scale", scale)  # (out,) fp32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @classmethod
    def from_quantized(cls, weight_t: Tensor, scale: Tensor, bias: Tensor | None = None,
                       inv_smooth: Tensor | None = None) -> Int8Linear:
        """An Int8Linear from the tensors another one holds (a saved checkpoint): weight_t (in, out) int8,
        scale (out,) with the activations' 1/127 folded in, as ``__init__`` makes it; bias (out,); inv_smooth (in,)."""
        in_f, out_f = weight_t.shape
        if weight_t.dtype != torch.int8:
            raise ValueError(f"weight_t must be int8, got {weight_t.dtype}")
        for name, t, n in (("scale", scale, out_f), ("bias", bias, out_f), ("inv_smooth", inv_smooth, in_f)):
            if t is not None and tuple(t.shape) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.float())
        if inv_smooth is not None:
            self.register_buffer("inv_smooth", inv_smooth.float())
        else:
            self.inv_smooth = None
        self.in_features, self.out_features = in_f, out_f
        return self

    def forward(self, x: Tensor) -> Tensor:
        # Few, large ops: at batch 1 (25 tokens) the GEMM takes 40 us and every extra pass over x or y ~5 us.
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()  # (tokens, in)
        if self.inv_smooth is not None:
            x2 = x2 * self.inv_smooth
        amax = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-8)  # (tokens, 1)
        xq = torch.mul(x2, QMAX / amax).round_().to(torch.int8)
        y = _int_mm(xq, self.weight_t).float().mul_(amax)  # (tokens, out): int32 -> float, row scales
        y = y.mul_(self.scale) if self.bias is None else torch.addcmul(self.bias, y, self.scale)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, smooth={self.inv_smooth is not None}"


def _int_mm(a: Tensor, b: Tensor) -> Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32. torch's kernel wants M > 16 on some builds: pad tiny M."""
    m = a.shape[0]
    if m > 16:
        return torch._int_mm(a, b)
    padded = torch.zeros(17, a.shape[1], dtype=torch.int8, device=a.device)
    padded[:m] = a
    return torch._int_mm(padded, b)[:m]


def linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def calibrate(module: nn.Module, run: Callable[[], object], names: Iterable[str]) -> dict[str, Tensor]:
    """Per-input-channel max |activation| (in,) of each named linear layer over ``run()`` (which feeds the
    model calibration batches)."""
    stats: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        lin = module.get_submodule(name)

        def hook(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a

        hooks.append(lin.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return stats


def smoothing_factors(act_max: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's s_j = max|x_j|^alpha / max|W_j|^(1-alpha): act_max (in,), weight (out, in) -> (in,)."""
    w_max = weight.detach().abs().amax(dim=0).float().clamp_min(1e-5)
    return (act_max.clamp_min(1e-5) ** alpha / w_max ** (1 - alpha)).clamp_min(1e-5)


@torch.no_grad()
def quantize_linears(module: nn.Module, keep: Iterable[str] = (), act_max: dict[str, Tensor] | None = None,
                     alpha: float = 0.5, log_name: str = "model") -> list[str]:
    """Replace every ``nn.Linear`` of ``module`` (except names ending with an entry of ``keep``) by an
    ``Int8Linear``, smoothed where ``act_max`` has the layer's calibration maxima. Returns the names replaced."""
    keep = tuple(keep)
    done = []
    for name in linear_names(module):
        if keep and any(name == k or name.endswith("." + k) for k in keep):
            continue
        lin = module.get_submodule(name)
        if lin.in_features % 8 or lin.out_features % 8:
            continue  # int8 GEMM kernels want multiples of 8; tiny heads stay in floating point
        smooth = None
        if act_max is not None and name in act_max:
            smooth = smoothing_factors(act_max[name], lin.weight, alpha)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Int8Linear(lin, smooth))
        done.append(name)
    kept = f"; kept in float: {', '.join(keep)}" if keep else ""
    log.info("int8: %d linear layers of %s quantized (per-channel weights, per-token activations%s)%s",
             len(done), log_name, ", smoothed" if act_max else "", kept)
    return done


CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")
# Measured on all-MiniLM-L6-v2 (README "Serving", `benchmarks/inference_engine.py --int8-ablation`): smoothing
# the layers fed by a LayerNorm (where BERT's outlier channels live, as in SmoothQuant) at alpha 0.5 raised the
# worst-case cosine to fp32 from 0.988 to 0.997; smoothing attn_out and mlp_out too made it worse (0.994);
# keeping mlp_out in float added 0.002 at a 17% speed cost, so by default every linear layer is int8.
DEFAULT_ALPHA = 0.5
SMOOTHED = ("Wqkv", "mlp_in")


def calibration_texts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Texts whose activation maxima set the smoothing factors: ``path`` (one per line) or the built-in
    set of 62 mixed-domain English sentences."""
    p = Path(path) if path is not None else CALIBRATION_FILE
    texts = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise ValueError(f"{p}: no calibration texts (one per line)")
    return texts


@torch.no_grad()
def quantize_encoder(encoder: BertModel, tokenizer: WordPieceTokenizer, engine: Engine,
                     texts: list[str] | None = None, keep: Iterable[str] = (), alpha: float = DEFAULT_ALPHA,
                     name: str = "model") -> list[str]:
    """Calibrate on ``texts`` (default: the built-in set), then make the encoder's linear layers int8."""
    ids = tokenizer.encode(texts or calibration_texts(), max_length=encoder.config.max_position_embeddings).ids
    device = next(encoder.parameters()).device

    def feed() -> None:
        for _, flat, types, packing in engine.batches(ids, None, device):
            encoder.forward_packed(flat, packing, types)

    act_max = calibrate(encoder, feed, [n for n in linear_names(encoder) if n.rsplit(".", 1)[-1] in SMOOTHED])
    return quantize_linears(encoder, keep, act_max, alpha, log_name=name)
