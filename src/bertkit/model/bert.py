"""The BERT encoder: embeddings, N transformer layers, optional pooler.

Plain BERT by default; ``EncoderConfig`` options give MosaicBERT / ModernBERT-style encoders:

``prenorm``                  h = h + Attn(LN(h)); h = h + FFN(LN(h)) instead of post-norm BERT's
                             h = LN(h + Attn(h)); h = LN(h + FFN(h)) (same ``attn_norm`` / ``mlp_norm``)
``ffn_type="glu"``           FFN(x) = W_out(act(gate) * up), (gate, up) = halves of W_in x (GeGLU with gelu)
``position_embedding_type``  "rope" rotates q and k (theta ``rope_theta``); "alibi" adds -slope * |i - j|
                             to the scores; neither has a position table (``Embeddings.position`` is None)
``use_bias=False``           no bias in the layers' Linears (LayerNorms and the pooler keep theirs)
``final_norm``               a LayerNorm after the last layer
``pruned_heads``, ``intermediate_sizes``  per-layer sizes left by structured pruning (``compress/structured.py``):
                             layer i has ``len(cfg.layer_heads(i))`` heads and ``cfg.layer_intermediate_size(i)``
                             FFN neurons; its matrices are that much smaller

One set of weights, three execution paths (see ``attention.py``). The linear layers, LayerNorms and
feed-forward block are shape-agnostic over the leading dimensions, so the same modules run on a padded
``(batch, seq, hidden)`` tensor or a packed ``(total_tokens, hidden)`` one; only attention differs.

Parameter names are our own; ``weights.py`` maps them to and from Hugging Face BERT names with an
explicit, asserted key table. Q, K and V are one fused ``Wqkv`` projection (one GEMM instead of three).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.model.attention import (
    PATHS,
    Packing,
    alibi_bias,
    alibi_slopes,
    log_path_once,
    padded_attention,
    rope_cos_sin,
    unpadded_attention,
)
from bertkit.model.config import EncoderConfig
from bertkit.model.dropout import Dropout

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# In-place variants for inference, where no autograd graph needs the pre-activation values.
_ACTIVATIONS_INPLACE = {
    "gelu": lambda x: torch.ops.aten.gelu_(x),
    "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "relu": lambda x: F.relu(x, inplace=True),
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
}

Rope = tuple[Tensor, Tensor]  # (cos, sin), each (length, head_dim)

_PATH_DETAIL = {
    "reference": "padded batch, eager matmul-softmax-matmul attention with additive mask",
    "sdpa": "padded batch, torch scaled_dot_product_attention with boolean mask (float with alibi)",
    "unpadded": "packed (total_tokens, hidden), attention per run of equal-length sequences, no padding",
}


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        # rope / alibi encode positions inside attention: no table.
        absolute = cfg.position_embedding_type == "absolute"
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size) if absolute else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """ids of any shape (...) -> (..., hidden); position_ids are unused without a position table."""
        h = self.word(input_ids) + self.token_type(token_type_ids)
        if self.position is not None:
            h = h + self.position(position_ids)
        return self.dropout(self.norm(h))


class Layer(nn.Module):
    """Transformer layer, post-norm (BERT) or pre-norm (``cfg.prenorm``); see the module docstring.

    Layer ``index`` of ``cfg`` has its own head count and FFN width once pruned: with a = heads * head_dim,
    ``Wqkv`` is (3 * a, hidden) with rows [q; k; v], each head-major; ``attn_out`` is (hidden, a).
    """

    def __init__(self, cfg: EncoderConfig, index: int = 0) -> None:
        super().__init__()
        h, i, bias = cfg.hidden_size, cfg.layer_intermediate_size(index), cfg.use_bias
        self.head_ids = cfg.layer_heads(index)  # original ids of the heads kept (ALiBi slopes follow them)
        self.num_heads = len(self.head_ids)
        a = self.num_heads * cfg.head_dim
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.prenorm = cfg.prenorm
        self.glu = cfg.ffn_type == "glu"
        self.Wqkv = nn.Linear(h, 3 * a, bias=bias)
        self.attn_out = nn.Linear(a, h, bias=bias)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.mlp_in = nn.Linear(h, 2 * i if self.glu else i, bias=bias)  # GLU: rows [gate; up]
        self.mlp_out = nn.Linear(i, h, bias=bias)
        self.mlp_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.act_ = _ACTIVATIONS_INPLACE[cfg.hidden_act]
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: Tensor, path: str, mask: Tensor | None, packing: Packing | None,
                rope: Rope | None = None, alibi: Tensor | None = None) -> Tensor:
        """h: (batch, seq, hidden) for padded paths, (total_tokens, hidden) for unpadded.

        rope, alibi: position tables from ``BertModel.relative_positions`` (or None), as attention takes them.
        """
        p = self.attn_dropout if self.training else 0.0
        if alibi is not None and alibi.shape[0] != self.num_heads:  # pruned heads: the slopes of those kept
            alibi = alibi[self.head_ids]
        qkv = self.Wqkv(self.attn_norm(h) if self.prenorm else h)  # (..., 3 * heads * head_dim)
        if path == "unpadded":
            ctx = unpadded_attention(qkv, packing, self.num_heads, p, rope, alibi)
        else:
            ctx = padded_attention(qkv, mask, self.num_heads, path, p, rope, alibi)
        if path == "reference" or torch.is_grad_enabled() or torch.is_autocast_enabled(h.device.type):
            if self.prenorm:
                h = h + self.dropout(self.attn_out(ctx))
                return h + self.dropout(self.mlp_out(self.ffn_hidden(self.mlp_norm(h), self.act)))
            h = self.attn_norm(h + self.dropout(self.attn_out(ctx)))
            return self.mlp_norm(h + self.dropout(self.mlp_out(self.ffn_hidden(h, self.act))))
        # Inference off the reference path: GEMMs accumulate into the residual stream in place
        # (BLAS's C += A B) and the activation runs in place, saving three passes over memory per
        # layer (FFN block 13.1 -> 12.2 ms for 940 tokens here; its GEMMs alone take 11.4 ms).
        # h is this model's own activation (never a caller's tensor), so overwriting it is safe.
        if self.prenorm:
            h = _add_linear_(h, ctx, self.attn_out)
            return _add_linear_(h, self.ffn_hidden(self.mlp_norm(h), self.act_), self.mlp_out)
        h = self.attn_norm(_add_linear_(h, ctx, self.attn_out))
        return self.mlp_norm(_add_linear_(h, self.ffn_hidden(h, self.act_), self.mlp_out))

    def ffn_hidden(self, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
        """The FFN up to ``mlp_out``: (..., hidden) -> (..., intermediate). ``act`` may work in place."""
        x = self.mlp_in(x)
        if not self.glu:
            return act(x)
        gate, up = x.chunk(2, dim=-1)  # views, each (..., intermediate)
        return act(gate) * up


def _add_linear_(residual: Tensor, x: Tensor, linear: nn.Linear) -> Tensor:
    """residual += linear(x), in place: x (..., in), residual (..., out) -> residual."""
    # An int8 layer (inference/int8.py) runs its own GEMM; a layer with forward hooks (calibration,
    # distillation) must be called as a module or its hooks never fire.
    if type(linear) is not nn.Linear or linear._forward_hooks or linear._forward_pre_hooks:
        return residual.add_(linear(x))
    flat = residual.view(-1, residual.shape[-1])
    flat.addmm_(x.reshape(-1, x.shape[-1]), linear.weight.t())
    if linear.bias is not None:
        flat.add_(linear.bias)
    return residual


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b), BERT's next-sentence pooler."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, cls_states: Tensor) -> Tensor:
        return torch.tanh(self.dense(cls_states))  # (batch, hidden)


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (batch, seq, hidden); zeros at padding on the unpadded path
    pooler_output: Tensor | None  # (batch, hidden)


class BertModel(nn.Module):
    def __init__(self, cfg: EncoderConfig, add_pooler: bool = True, path: str = "unpadded") -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.final_norm else None
        self.pooler = Pooler(cfg) if add_pooler else None
        self.path = path
        self.apply(self._init_weights)

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise ValueError(f"unknown execution path {value!r}; choose one of {', '.join(PATHS)}")
        self._path = value

    def _init_weights(self, m: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def relative_positions(self, length: int, device: torch.device) -> tuple[Rope | None, Tensor | None]:
        """(rope, alibi) tables for positions 0..length-1, built once per forward for all layers.

        rope: (cos, sin) each (length, head_dim) or None; alibi: (heads, length, length) or None.
        """
        cfg = self.config
        if cfg.position_embedding_type == "rope":
            return rope_cos_sin(torch.arange(length, device=device), cfg.head_dim, cfg.rope_theta), None
        if cfg.position_embedding_type == "alibi":
            return None, alibi_bias(alibi_slopes(cfg.num_attention_heads).to(device), length)
        return None, None

    # ---- packed (padding-free) entry point ------------------------------------------------
    def forward_packed(self, input_ids: Tensor, packing: Packing,
                       token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids: (total_tokens,) of all sequences back to back -> (total_tokens, hidden)."""
        log_path_once("unpadded", _PATH_DETAIL["unpadded"])
        self._check_length(max(packing.lengths))
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, packing.position_ids(), token_type_ids)
        rope, alibi = self.relative_positions(max(packing.lengths), input_ids.device)
        for layer in self.layers:
            h = layer(h, "unpadded", None, packing, rope, alibi)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return h

    def pool(self, h: Tensor, packing: Packing) -> Tensor | None:
        """Pooler output from packed states: (total_tokens, hidden) -> (batch, hidden)."""
        if self.pooler is None:
            return None
        return self.pooler(h[packing.cu_seqlens[:-1]])

    # ---- padded entry point (HF-compatible signature) -------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, path: str | None = None) -> EncoderOutput:
        """input_ids, attention_mask, token_type_ids: (batch, seq) -> EncoderOutput.

        ``path`` overrides ``self.path`` for this call. The unpadded path needs right padding
        (each mask row is ones then zeros), as BERT tokenizers produce.
        """
        path = self.path if path is None else path
        if path not in PATHS:
            raise ValueError(f"unknown execution path {path!r}; choose one of {', '.join(PATHS)}")
        b, s = input_ids.shape
        self._check_length(s)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.bool()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)

        if path == "unpadded":
            if s > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
                raise ValueError("the unpadded path needs right-padded attention_mask rows (ones, then zeros)")
            lengths = mask.sum(1)
            if bool((lengths == 0).any()):
                raise ValueError("every sequence needs at least one unmasked token")
            flat = mask.flatten().nonzero().squeeze(1)  # (total_tokens,) positions in the (b*s) grid
            packing = Packing.from_lengths(lengths.tolist(), device=input_ids.device)
            h = self.forward_packed(input_ids.flatten()[flat], packing, token_type_ids.flatten()[flat])
            pooled = self.pool(h, packing)
            out = h.new_zeros(b * s, h.shape[-1])
            out[flat] = h
            return EncoderOutput(out.view(b, s, -1), pooled)

        log_path_once(path, _PATH_DETAIL[path])
        positions = torch.arange(s, device=input_ids.device).expand(b, s)
        h = self.embeddings(input_ids, positions, token_type_ids)
        rope, alibi = self.relative_positions(s, input_ids.device)
        for layer in self.layers:
            h = layer(h, path, mask, None, rope, alibi)
        if self.final_norm is not None:
            h = self.final_norm(h)
        pooled = self.pooler(h[:, 0]) if self.pooler is not None else None
        return EncoderOutput(h, pooled)

    def _check_length(self, n: int) -> None:
        # Kept for rope / alibi too, which could extrapolate: max_position_embeddings stays the
        # model's one stated limit (what tokenizers truncate to and training saw).
        if n > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {n} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "truncate the input"
            )
