"""The encoder: embeddings, N transformer layers, optional pooler - one implementation for every family.

Plain BERT by default; ``EncoderConfig`` options give the other families (``model/families/``) and
MosaicBERT / ModernBERT-style encoders:

``prenorm``                  h = h + Attn(LN(h)); h = h + FFN(LN(h)) instead of post-norm BERT's
                             h = LN(h + Attn(h)); h = LN(h + FFN(h)) (same ``attn_norm`` / ``mlp_norm``);
                             ``first_layer_attn_norm=False`` drops layer 0's norm before attention (ModernBERT)
``ffn_type="glu"``           FFN(x) = W_out(act(gate) * up), (gate, up) = halves of W_in x (GeGLU with gelu)
``position_embedding_type``  "absolute" (a table, positions shifted by ``position_offset``), "rope", "alibi", or
                             "none"; relative schemes (``relative_attention``, ``layer_types``) in ``positions.py``
``embedding_size``           embedding tables narrower than ``hidden_size``, projected (ELECTRA, DeBERTa)
``type_vocab_size=0``        no token-type table
``use_bias=False``           no bias in the layers' Linears (LayerNorms and the pooler keep theirs);
                             ``norm_bias=False`` removes the LayerNorms' too
``final_norm``               a LayerNorm after the last layer
``pruned_heads``, ``intermediate_sizes``  per-layer sizes left by structured pruning (``compress/structured.py``):
                             layer i has ``len(cfg.layer_heads(i))`` heads and ``cfg.layer_intermediate_size(i)``
                             FFN neurons; its matrices are that much smaller

One set of weights, three execution paths (see ``attention.py``). The linear layers, LayerNorms and
feed-forward block are shape-agnostic over the leading dimensions, so the same modules run on a padded
``(batch, seq, hidden)`` tensor or a packed ``(total_tokens, hidden)`` one; only attention differs, and the
model hands each layer the path's attention function (``Attend``) once per forward.

Parameter names are our own; ``weights.py`` with each family's key table (``model/families/``) maps them to and
from Hugging Face names, asserted. Q, K and V are one fused ``Wqkv`` projection (one GEMM instead of three).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.model.attention import (
    PATH_DETAIL,
    PATHS,
    Attend,
    Packing,
    log_path_once,
    packed_attend,
    padded_attend,
    split_runs,
)
from bertkit.model.config import EncoderConfig
from bertkit.model.dropout import Dropout, dropout
from bertkit.model.positions import (
    RelativePositions,
    Rope,
    ScoreBias,
    Tables,
    apply_rope,
    disentangled_bias,
    layer_half_window,
    layer_rope_theta,
    static_bias,
    sum_biases,
)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact erf GELU, as BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
_ACTIVATIONS = ACTIVATIONS  # deprecated name

# In-place variants for inference, where no autograd graph needs the pre-activation values.
_ACTIVATIONS_INPLACE = {
    "gelu": lambda x: torch.ops.aten.gelu_(x),
    "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "relu": lambda x: F.relu(x, inplace=True),
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
    "tanh": lambda x: x.tanh_(),
}


def layer_norm(cfg: EncoderConfig, width: int | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(width or cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)


class Embeddings(nn.Module):
    """word (+ token type) (+ absolute position) -> LayerNorm -> dropout, with a projection to ``hidden_size``
    when the tables are narrower (before the norm for DeBERTa, after it for ELECTRA)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        e, h = cfg.embedding_width, cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, e, padding_idx=cfg.pad_token_id)
        # rope / alibi / relative schemes encode positions inside attention: no table.
        absolute = cfg.position_embedding_type == "absolute"
        self.position = nn.Embedding(cfg.max_position_embeddings, e) if absolute else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, e) if cfg.type_vocab_size > 0 else None
        self.offset = cfg.position_offset
        self.project_first = e != h and cfg.embedding_projection == "before_norm"
        self.norm = layer_norm(cfg, h if self.project_first else e)
        self.project = nn.Linear(e, h, bias=not self.project_first) if e != h else None
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """ids of any shape (...) -> (..., hidden); ``position_ids`` count from 0 in each sequence."""
        h = self.word(input_ids)
        if self.token_type is not None:
            h = h + self.token_type(token_type_ids)
        if self.position is not None:
            h = h + self.position(position_ids + self.offset if self.offset else position_ids)
        if self.project is None:
            return self.dropout(self.norm(h))
        if self.project_first:
            return self.dropout(self.norm(self.project(h)))
        return self.project(self.dropout(self.norm(h)))


class Layer(nn.Module):
    """Transformer layer, post-norm (BERT) or pre-norm (``cfg.prenorm``); see the module docstring.

    Layer ``index`` of ``cfg`` has its own head count and FFN width once pruned: with a = heads * head_dim,
    ``Wqkv`` is (3 * a, hidden) with rows [q; k; v], each head-major; ``attn_out`` is (hidden, a). Its position
    scheme (rope base, sliding window, relative bias) is fixed here, from the config.
    """

    def __init__(self, cfg: EncoderConfig, index: int = 0) -> None:
        super().__init__()
        h, i, bias = cfg.hidden_size, cfg.layer_intermediate_size(index), cfg.use_bias
        self.head_ids = cfg.layer_heads(index)  # original ids of the heads kept (ALiBi slopes follow them)
        self.num_heads = len(self.head_ids)
        self.head_dim = cfg.head_dim
        a = self.num_heads * cfg.head_dim
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.prenorm = cfg.prenorm
        self.glu = cfg.ffn_type == "glu"
        self.scale = cfg.attention_scale
        self.Wqkv = nn.Linear(h, 3 * a, bias=bias)
        self.attn_out = nn.Linear(a, h, bias=bias)
        no_norm = cfg.prenorm and index == 0 and not cfg.first_layer_attn_norm
        self.attn_norm = nn.Identity() if no_norm else layer_norm(cfg)
        self.mlp_in = nn.Linear(h, 2 * i if self.glu else i, bias=bias)  # GLU: rows [gate; up]
        self.mlp_out = nn.Linear(i, h, bias=bias)
        self.mlp_norm = layer_norm(cfg)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.act_ = _ACTIVATIONS_INPLACE[cfg.hidden_act]
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        # Positions: decided once here, looked up in the forward's shared tables.
        self.rope_theta = layer_rope_theta(cfg, index)
        self.half_window = layer_half_window(cfg, index)
        self.disentangled = cfg.relative_attention == "disentangled"
        self.pos_att_type = list(cfg.pos_att_type)
        self.share_att_key = cfg.share_att_key
        self.rel_dropout = cfg.hidden_dropout_prob
        self.pos_k = self.pos_q = None  # DeBERTa without share_att_key: own projections of the relative embeddings
        if self.disentangled and not cfg.share_att_key:
            self.pos_k = nn.Linear(h, a) if "c2p" in cfg.pos_att_type else None
            self.pos_q = nn.Linear(h, a) if "p2c" in cfg.pos_att_type else None

    def positions(self, tables: Tables) -> tuple[Rope | None, ScoreBias | None]:
        """This layer's rope table and score bias for one forward's ``tables``."""
        rope = tables.rope.get(self.rope_theta) if self.rope_theta is not None else None
        parts = []
        if tables.bias is not None:
            pruned = self.num_heads != tables.bias.shape[0]
            parts.append(static_bias(tables.bias, self.head_ids if pruned else None))
        if self.half_window is not None and self.half_window in tables.windows:
            parts.append(static_bias(tables.windows[self.half_window], None))
        if self.disentangled and tables.rel is not None:
            parts.append(self._disentangled(tables))
        return rope, sum_biases(parts)

    def _disentangled(self, tables: Tables) -> ScoreBias:
        rel = dropout(tables.rel, self.rel_dropout, self.training)  # (rows, hidden)
        a = self.num_heads * self.head_dim
        # share_att_key: the relative embeddings go through the content projections (rows [q; k; v] of Wqkv). Wqkv
        # is called as a module (it may be int8, bf16 or hooked); v's third is wasted, on at most 2L - 1 rows.
        shared = self.Wqkv(rel) if self.share_att_key else None  # (rows, 3 * a)

        def heads(x: Tensor) -> Tensor:  # (rows, a) -> (heads, rows, head_dim)
            return x.view(-1, self.num_heads, self.head_dim).transpose(0, 1)

        pos_k = pos_q = None
        if "c2p" in self.pos_att_type:
            pos_k = heads(shared[:, a:2 * a] if shared is not None else self.pos_k(rel))
        if "p2c" in self.pos_att_type:
            pos_q = heads(shared[:, :a] if shared is not None else self.pos_q(rel))
        return disentangled_bias(pos_k, pos_q, tables.rel_index, self.scale)

    def attention_scores(self, qkv: Tensor, packing: Packing, tables: Tables) -> Iterator[Tensor]:
        """This layer's attention logits, before softmax and dropout: one ``(n_seqs, heads, L, L)`` block per run of
        equal-length sequences (split as ``unpadded_attention`` splits them).

        qkv: (total_tokens, 3 * heads * head_dim), this layer's ``Wqkv`` output on packed tokens; tables: the
        forward's ``position_tables``. The scores are ``scale * q k^T`` with the layer's own positions (rope base,
        ALiBi / bucket bias of its heads, DeBERTa's disentangled terms, its sliding window), as it attends; what
        distillation compares (``compress/distill.py``) without re-implementing any family's positions.
        """
        rope, bias = self.positions(tables)
        qkv = qkv.view(qkv.shape[0], 3, self.num_heads, self.head_dim)
        for start, n, length in split_runs(packing.runs, self.num_heads):
            block = qkv[start:start + n * length].view(n, length, 3, self.num_heads, self.head_dim)
            q, k = block[:, :, 0].transpose(1, 2), block[:, :, 1].transpose(1, 2)  # (n, heads, L, head_dim)
            if rope is not None:
                q, k = apply_rope(q, k, rope[0][:length], rope[1][:length])
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            yield scores if bias is None else scores + bias(q, k)

    def forward(self, h: Tensor, attend: Attend, tables: Tables, exact: bool = False) -> Tensor:
        """h: (batch, seq, hidden) padded or (total_tokens, hidden) packed, as ``attend`` expects.

        attend: the path's attention function (``attention.py``); tables: the forward's position tables;
        exact: no in-place shortcuts (the reference path).
        """
        p = self.attn_dropout if self.training else 0.0
        rope, bias = self.positions(tables)
        qkv = self.Wqkv(self.attn_norm(h) if self.prenorm else h)  # (..., 3 * heads * head_dim)
        ctx = attend(qkv, self.num_heads, p, rope, bias, self.scale)
        # (a training-mode forward without grad, e.g. GradCache's first pass, still draws the hidden dropout)
        if exact or torch.is_grad_enabled() or torch.is_autocast_enabled(h.device.type) or \
                (self.training and self.dropout.p > 0):
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
    """tanh(W h_[CLS] + b), BERT's next-sentence pooler (also in RoBERTa / XLM-R / MPNet base checkpoints)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, cls_states: Tensor) -> Tensor:
        return torch.tanh(self.dense(cls_states))  # (batch, hidden)


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (batch, seq, hidden); zeros at padding on the unpadded path
    pooler_output: Tensor | None  # (batch, hidden)


def sinusoids(n_positions: int, dim: int) -> Tensor:
    """DistilBERT's fixed position table (n_positions, dim): sin on even columns, cos on odd ones."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, 2 * (torch.arange(dim) // 2).double() / dim)
    angles = pos / freq
    out = torch.empty(n_positions, dim, dtype=torch.float64)
    out[:, 0::2], out[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return out.float()


class BertModel(nn.Module):
    """The encoder of every family (the class keeps BERT's name; ``EncoderModel`` is the same class)."""

    def __init__(self, cfg: EncoderConfig, add_pooler: bool = True, path: str = "unpadded") -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_hidden_layers))
        needs_tables = cfg.relative_attention != "none" or cfg.position_embedding_type in ("rope", "alibi")
        self.rel = RelativePositions(cfg) if needs_tables else None
        self.final_norm = layer_norm(cfg) if cfg.final_norm else None
        self.pooler = Pooler(cfg) if add_pooler else None
        self.path = path
        self.apply(self._init_weights)
        if cfg.sinusoidal_positions and self.embeddings.position is not None:
            with torch.no_grad():
                self.embeddings.position.weight.copy_(sinusoids(cfg.max_position_embeddings, cfg.embedding_width))
            self.embeddings.position.weight.requires_grad_(False)

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
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def position_tables(self, length: int, device: torch.device) -> Tables:
        """Every layer's position tables for sequences of up to ``length`` tokens, built once per forward."""
        return Tables(length) if self.rel is None else self.rel.tables(length, device)

    def relative_positions(self, length: int, device: torch.device) -> tuple[Rope | None, Tensor | None]:
        """Deprecated: (rope, alibi) of the first layer, as before families existed; use ``position_tables``."""
        t = self.position_tables(length, device)
        theta = self.layers[0].rope_theta if len(self.layers) else None
        alibi = t.bias if self.config.position_embedding_type == "alibi" else None
        return (t.rope.get(theta) if theta is not None else None), alibi

    def run_layers(self, h: Tensor, attend: Attend, tables: Tables, exact: bool = False,
                   num_layers: int | None = None) -> Tensor:
        """h after the first ``num_layers`` layers (all, then the final norm, when None)."""
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for layer in layers:
            h = layer(h, attend, tables, exact)
        if self.final_norm is not None and (num_layers is None or num_layers == len(self.layers)):
            h = self.final_norm(h)
        return h

    # ---- packed (padding-free) entry point ------------------------------------------------
    def forward_packed(self, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None,
                       num_layers: int | None = None) -> Tensor:
        """input_ids: (total_tokens,) of all sequences back to back -> (total_tokens, hidden).

        num_layers: stop after that many layers (the final norm belongs to the last layer's output only).
        """
        log_path_once("unpadded", PATH_DETAIL["unpadded"])
        longest = packing.max_length
        self._check_length(longest)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.embeddings(input_ids, packing.position_ids(), token_type_ids)
        tables = self.position_tables(longest, input_ids.device)
        return self.run_layers(h, packed_attend(packing), tables, num_layers=num_layers)

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

        log_path_once(path, PATH_DETAIL[path])
        positions = torch.arange(s, device=input_ids.device).expand(b, s)
        h = self.embeddings(input_ids, positions, token_type_ids)
        tables = self.position_tables(s, input_ids.device)
        h = self.run_layers(h, padded_attend(mask, path), tables, exact=path == "reference")
        pooled = self.pooler(h[:, 0]) if self.pooler is not None else None
        return EncoderOutput(h, pooled)

    def _check_length(self, n: int) -> None:
        # Kept for rope / alibi too, which could extrapolate: max_position_embeddings stays the
        # model's one stated limit (what tokenizers truncate to and training saw).
        if n > self.config.max_tokens:
            raise ValueError(
                f"sequence of {n} tokens exceeds the model's limit of {self.config.max_tokens} "
                f"(max_position_embeddings={self.config.max_position_embeddings}"
                + (f" - position offset {self.config.position_offset}" if self.config.position_offset else "")
                + "); truncate the input"
            )


EncoderModel = BertModel
_PATH_DETAIL = PATH_DETAIL  # deprecated name
