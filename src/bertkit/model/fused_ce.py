"""Cross-entropy of a linear layer's output, with the gradient computed in the forward pass.

For MLM the decoder's logits are ``(n_masked, vocab)``: 37M numbers for MiniLM at batch 32 x 128 with 30%
masking. ``F.cross_entropy`` then spends more time on elementwise passes over that matrix (log-softmax, its
backward, a full-size zero fill for the NLL gradient, fp32 <-> bf16 casts: 450 ms of a 1.8 s bf16 step here)
than on the decoder's matmuls. Here the softmax gradient ``softmax(z) - onehot(t)`` is written over the
logits block by block in fp32 (a block of rows fits in cache), and backward is the linear layer's two
products with that gradient, as single GEMMs whose alpha carries the scale.
The idea is that of Liger-Kernel's fused linear cross-entropy, in plain PyTorch ops.

Used only when gradients are wanted; evaluation takes the plain path. Matches ``F.cross_entropy(F.linear(h,
W, b).float(), t)`` (tested, values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ROWS = 32  # 32 x 30,522 fp32 = 3.9 MB per block


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, dtype: torch.dtype) -> Tensor:
        n = h.shape[0]
        hc, wc, b = h.to(dtype), weight.to(dtype), bias.float()
        g = hc @ wc.t()  # (n, vocab) logits without bias, then overwritten by the gradient of the summed loss
        loss = torch.zeros((), dtype=torch.float64)
        grad_b = torch.zeros_like(b)  # (vocab,) summed per block in fp32: a bf16 column sum of g is slow here
        for r in range(0, n, BLOCK_ROWS):
            z = g[r:r + BLOCK_ROWS].float().add_(b)  # (rows, vocab) logits
            t = targets[r:r + BLOCK_ROWS]
            lse = torch.logsumexp(z, dim=-1)  # (rows,)
            loss += (lse - z.gather(1, t[:, None]).squeeze(1)).sum().double()
            p = z.sub_(lse[:, None]).exp_()  # softmax
            p[torch.arange(len(t)), t] -= 1.0
            grad_b += p.sum(0)
            g[r:r + BLOCK_ROWS].copy_(p)
        ctx.save_for_backward(g, hc, wc, grad_b)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return (loss / n).float()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        g, hc, wc, grad_b = ctx.saved_tensors
        s = float(grad_out) / g.shape[0]  # d(mean loss) = sum-loss gradient / n, times the incoming gradient
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        # the scale rides on the GEMMs (alpha) instead of a separate pass over the (vocab, hidden) gradient
        grad_h = torch.addmm(g.new_zeros(()), g, wc, beta=0.0, alpha=s).to(h_dtype)  # (n, hidden)
        grad_w = torch.addmm(g.new_zeros(()), g.t(), hc, beta=0.0, alpha=s).to(w_dtype)  # (vocab, hidden)
        return grad_h, grad_w, (grad_b * s).to(b_dtype), None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """mean_i CE(h_i W^T + b, t_i): h (n, hidden), weight (vocab, hidden), bias (vocab,) or None, targets (n,)
    -> ()."""
    if bias is None:  # a decoder without bias (ModernBERT with decoder_bias false): a constant zero one
        bias = weight.new_zeros(weight.shape[0], dtype=torch.float32)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else torch.float32
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        return F.cross_entropy(F.linear(h, weight, bias).float(), targets)
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, bias, targets, dtype)
