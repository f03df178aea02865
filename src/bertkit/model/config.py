"""EncoderConfig: the model's shape, in one vocabulary for every encoder family.

Every ``BertConfig`` field is a dataclass field with the same name and default; this is the canonical
form. Other families' ``config.json`` files (RoBERTa, DeBERTa-v2, ModernBERT, ...) are translated to and
from it by ``bertkit.model.families`` (``read_config`` / ``write_config``), each family a table of its
field names plus the options below. Keys we do not model (``architectures``, ``transformers_version``,
``id2label`` ...) are kept in ``extra`` and written back unchanged, so a round trip loses nothing.

Modern-encoder options (MosaicBERT / ModernBERT style, see ``bert.py``) are extra fields that
``to_dict`` writes only when they differ from their defaults, so a plain BERT config.json is
exactly what BertConfig writes: ``prenorm``, ``ffn_type``, ``rope_theta``, ``use_bias``,
``final_norm``; ``position_embedding_type`` also accepts ``"rope"``, ``"alibi"`` and ``"none"``.

Family options (what the other encoder families need; all written only when not at their default):

``position_offset``        added to every token's position (RoBERTa/XLM-R: ``pad_token_id + 1``; MPNet: 2), so
                           the longest input is ``max_position_embeddings - position_offset`` tokens
``embedding_size``         width of the embedding tables when it is not ``hidden_size`` (ELECTRA, DeBERTa), with a
                           projection to ``hidden_size``: ``embedding_projection`` "after_norm" (ELECTRA: LayerNorm,
                           then Linear with bias) or "before_norm" (DeBERTa: Linear without bias, then LayerNorm)
``type_vocab_size: 0``     no token-type table (DistilBERT, DeBERTa-v3, ModernBERT, MPNet)
``norm_bias``              LayerNorms with a bias (ModernBERT: none)
``first_layer_attn_norm``  pre-norm stacks: False leaves layer 0 without the norm before attention (ModernBERT,
                           whose embedding norm serves)
``relative_attention``     "bucket_bias": a learned per-head bias of the bucketed distance j - i, shared by all layers
                           (MPNet/T5; ``relative_attention_num_buckets``, ``relative_max_distance``);
                           "disentangled": DeBERTa's content-to-position and position-to-content scores
                           (``pos_att_type`` c2p / p2c, log buckets ``position_buckets``, ``max_relative_positions``,
                           ``share_att_key``, ``norm_rel_ebd``)
``layer_types``            per layer "full_attention" or "sliding_attention" (ModernBERT): a sliding layer attends only
                           within ``local_attention // 2`` tokens either side, with RoPE base ``local_rope_theta``
``sinusoidal_positions``   DistilBERT: the position table starts as fixed sinusoids (the weights are stored anyway)

Structured pruning (``bertkit.compress.structured``) gives layers their own sizes; both keys are written
only when set:

``pruned_heads``        ``{layer: [head ids]}``, the heads removed from each layer, numbered as in the
                        unpruned layer (0..num_attention_heads-1). Hugging Face's own key: transformers 4.x
                        ``BertModel`` prunes these heads at init, so a head-pruned checkpoint loads there
                        with equal outputs (checked with 4.46). transformers 5 removed head pruning: its
                        ``from_pretrained`` refuses the smaller q/k/v tensors (size mismatch). A layer keeps
                        at least one head; drop a whole layer instead (``drop_layers``).
``intermediate_sizes``  ``[int] * num_hidden_layers``, each layer's FFN width (default: ``intermediate_size``
                        everywhere). Our key: transformers has no per-layer FFN size, so a checkpoint with
                        pruned FFN neurons loads in bertkit only (``save_pretrained`` still writes HF names).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertkit.errors import ConfigError

# Activations the feed-forward block implements; names as in transformers' ACT2FN.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
SUPPORTED_POSITION_TYPES = ("absolute", "rope", "alibi", "none")
SUPPORTED_FFN_TYPES = ("mlp", "glu")
SUPPORTED_RELATIVE_ATTENTION = ("none", "bucket_bias", "disentangled")
SUPPORTED_POS_ATT_TYPES = ("c2p", "p2c")
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")
SUPPORTED_EMBEDDING_PROJECTIONS = ("after_norm", "before_norm")
# Fields beyond BertConfig: written to config.json only when not at their default.
OPTION_FIELDS = ("prenorm", "ffn_type", "rope_theta", "use_bias", "final_norm", "position_offset", "embedding_size",
                 "embedding_projection", "norm_bias", "first_layer_attn_norm", "relative_attention",
                 "relative_attention_num_buckets", "relative_max_distance", "position_buckets",
                 "max_relative_positions", "share_att_key", "pos_att_type", "norm_rel_ebd", "layer_types",
                 "local_attention", "local_rope_theta", "sinusoidal_positions")
# Per-layer sizes after structured pruning: validated on their own, written only when set.
PRUNING_FIELDS = ("pruned_heads", "intermediate_sizes")


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | None = None
    model_type: str = "bert"
    prenorm: bool = False  # LayerNorm before attention / FFN instead of after the residual add
    ffn_type: str = "mlp"  # "glu": mlp_in is (hidden -> 2 * intermediate), out = W(act(gate) * up)
    rope_theta: float = 10000.0  # RoPE base, used when position_embedding_type == "rope"
    use_bias: bool = True  # False: the encoder layers' Linears have no bias (LayerNorms keep theirs)
    final_norm: bool = False  # a LayerNorm after the last layer (pre-norm stacks need one)
    position_offset: int = 0  # added to each token's position (RoBERTa: pad_token_id + 1)
    embedding_size: int | None = None  # embedding width when it differs from hidden_size (ELECTRA, DeBERTa)
    embedding_projection: str = "after_norm"  # where the embedding_size -> hidden_size projection sits
    norm_bias: bool = True  # LayerNorms have a bias
    first_layer_attn_norm: bool = True  # pre-norm: layer 0 normalizes before attention (ModernBERT: no)
    relative_attention: str = "none"  # "bucket_bias" (MPNet) | "disentangled" (DeBERTa)
    relative_attention_num_buckets: int = 32  # bucket_bias: buckets of the distance j - i
    relative_max_distance: int = 128  # bucket_bias: distances beyond share the last bucket
    position_buckets: int = -1  # disentangled: log buckets of the distance (-1: exact distances)
    max_relative_positions: int = -1  # disentangled: largest distance told apart (-1: max_position_embeddings)
    share_att_key: bool = False  # disentangled: positions go through the content q/k projections
    pos_att_type: list[str] = field(default_factory=list)  # disentangled: "c2p" and/or "p2c"
    norm_rel_ebd: str = "none"  # disentangled: "layer_norm" normalizes the relative embeddings
    layer_types: list[str] | None = None  # per layer "full_attention" | "sliding_attention"; None: all full
    local_attention: int = 128  # sliding_attention: window width (attends |i - j| <= local_attention // 2)
    local_rope_theta: float | None = None  # RoPE base of sliding layers; None: rope_theta
    sinusoidal_positions: bool = False  # the position table starts as fixed sinusoids (DistilBERT)
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)  # layer -> removed head ids (HF's key)
    intermediate_sizes: list[int] | None = None  # per-layer FFN width; None: intermediate_size everywhere
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pruned_heads = _canonical_pruned_heads(self.pruned_heads)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        """Width of the word / position / type tables: ``embedding_size`` or ``hidden_size``."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def max_tokens(self) -> int:
        """The longest input the model takes: ``max_position_embeddings - position_offset``."""
        return self.max_position_embeddings - self.position_offset

    @property
    def attention_scale(self) -> float:
        """Multiplier of q.k: 1 / sqrt(head_dim), DeBERTa 1 / sqrt(head_dim * (1 + len(pos_att_type)))."""
        factor = 1 + len(self.pos_att_type) if self.relative_attention == "disentangled" else 1
        return 1.0 / math.sqrt(self.head_dim * factor)

    def layer_type(self, layer: int) -> str:
        return "full_attention" if self.layer_types is None else self.layer_types[layer]

    def layer_heads(self, layer: int) -> list[int]:
        """The ids of the heads layer ``layer`` keeps, in order (ids of the unpruned layer)."""
        removed = set(self.pruned_heads.get(layer, ()))
        return [h for h in range(self.num_attention_heads) if h not in removed]

    def layer_intermediate_size(self, layer: int) -> int:
        return self.intermediate_size if self.intermediate_sizes is None else self.intermediate_sizes[layer]

    def validate(self) -> None:
        """Raise ConfigError naming the field for any setting this encoder cannot run."""
        for f in dataclasses.fields(self):
            if f.name in ("extra", *PRUNING_FIELDS):
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("classifier_dropout", "embedding_size", "local_rope_theta", "layer_types"):
                continue
            want = FIELD_TYPES[f.name]
            if not _type_ok(value, want):
                raise ConfigError(
                    f"config field '{f.name}' must be {want.__name__}, got {value!r}"
                )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "relative_attention_num_buckets",
                     "relative_max_distance", "local_attention"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        for name in ("type_vocab_size", "position_offset"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config field '{name}' must be >= 0, got {getattr(self, name)}")
        if self.max_tokens < 1:
            raise ConfigError(f"config field 'max_position_embeddings' ({self.max_position_embeddings}) leaves no "
                              f"room for a token after the position offset ({self.position_offset})")
        if self.embedding_size is not None and self.embedding_size <= 0:
            raise ConfigError(f"config field 'embedding_size' must be positive, got {self.embedding_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"config field 'pad_token_id' ({self.pad_token_id}) is not a token id "
                              f"(vocab_size {self.vocab_size})")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"config field 'hidden_act' is {self.hidden_act!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        if self.position_embedding_type not in SUPPORTED_POSITION_TYPES:
            raise ConfigError(
                f"config field 'position_embedding_type' is {self.position_embedding_type!r}; "
                f"supported: {', '.join(SUPPORTED_POSITION_TYPES)}"
            )
        if self.ffn_type not in SUPPORTED_FFN_TYPES:
            raise ConfigError(
                f"config field 'ffn_type' is {self.ffn_type!r}; supported: {', '.join(SUPPORTED_FFN_TYPES)}"
            )
        for name, allowed in (("relative_attention", SUPPORTED_RELATIVE_ATTENTION),
                              ("embedding_projection", SUPPORTED_EMBEDDING_PROJECTIONS),
                              ("norm_rel_ebd", ("none", "layer_norm"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config field '{name}' is {getattr(self, name)!r}; supported: {', '.join(allowed)}")
        self._validate_relative()
        for name in ("rope_theta", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"config field '{name}' must be positive, got {value}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"config field 'position_embedding_type' is 'rope', which needs an even head size; "
                f"'hidden_size' / 'num_attention_heads' is {self.head_dim}"
            )
        for name in ("is_decoder", "add_cross_attention"):
            if self.extra.get(name):
                raise ConfigError(f"config field '{name}' is true; bertkit builds encoders only")
        self._validate_pruning()

    def _validate_relative(self) -> None:
        if not isinstance(self.pos_att_type, list) or not all(isinstance(x, str) for x in self.pos_att_type):
            raise ConfigError(f"config field 'pos_att_type' must be a list of names, got {self.pos_att_type!r}")
        for kind in self.pos_att_type:
            if kind not in SUPPORTED_POS_ATT_TYPES:
                raise ConfigError(f"config field 'pos_att_type' has {kind!r}; supported: "
                                  f"{', '.join(SUPPORTED_POS_ATT_TYPES)}")
        if self.layer_types is not None:
            if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers:
                raise ConfigError(f"config field 'layer_types' must list one type per layer "
                                  f"({self.num_hidden_layers}), got {self.layer_types!r}")
            bad = [t for t in self.layer_types if t not in SUPPORTED_LAYER_TYPES]
            if bad:
                raise ConfigError(f"config field 'layer_types' has {bad[0]!r}; supported: "
                                  f"{', '.join(SUPPORTED_LAYER_TYPES)}")

    def _validate_pruning(self) -> None:
        n_layers, n_heads = self.num_hidden_layers, self.num_attention_heads
        for layer, heads in _canonical_pruned_heads(self.pruned_heads).items():  # the field may be reassigned
            if not 0 <= layer < n_layers:
                raise ConfigError(f"config field 'pruned_heads' names layer {layer}; "
                                  f"the model has layers 0..{n_layers - 1}")
            bad = [h for h in heads if not 0 <= h < n_heads]
            if bad:
                raise ConfigError(f"config field 'pruned_heads' lists head {bad[0]} for layer {layer}; "
                                  f"heads are 0..{n_heads - 1}")
            if len(heads) == n_heads:
                raise ConfigError(f"config field 'pruned_heads' removes all {n_heads} heads of layer {layer}; "
                                  "a layer keeps at least one (drop the whole layer instead)")
        sizes = self.intermediate_sizes
        if sizes is None:
            return
        if not isinstance(sizes, list) or not all(_type_ok(x, int) for x in sizes):
            raise ConfigError(f"config field 'intermediate_sizes' must be a list of ints (one per layer) "
                              f"or null, got {sizes!r}")
        if len(sizes) != n_layers:
            raise ConfigError(f"config field 'intermediate_sizes' has {len(sizes)} entries for "
                              f"{n_layers} layers ('num_hidden_layers')")
        bad_sizes = [(i, x) for i, x in enumerate(sizes) if x < 1]
        if bad_sizes:
            i, x = bad_sizes[0]
            raise ConfigError(f"config field 'intermediate_sizes' gives layer {i} size {x}; each must be >= 1")

    # ---- HF config.json -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        # JSON has one number type: accept 1 for a float field, as transformers does.
        for k, v in kwargs.items():
            if FIELD_TYPES.get(k) is float and isinstance(v, int) and not isinstance(v, bool):
                kwargs[k] = float(v)
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("extra", *PRUNING_FIELDS)
             and not (f.name in OPTION_FIELDS and getattr(self, f.name) == f.default)}
        if self.pos_att_type:  # a list is not hashable-equal to its default factory: compare by value
            d["pos_att_type"] = list(self.pos_att_type)
        else:
            d.pop("pos_att_type", None)
        if self.pruned_heads:  # JSON object keys are strings; HF writes them so too
            d["pruned_heads"] = {str(k): list(v) for k, v in self.pruned_heads.items()}
        if self.intermediate_sizes is not None:
            d["intermediate_sizes"] = list(self.intermediate_sizes)
        out = dict(self.extra)
        out.update(d)
        out.setdefault("architectures", ["BertModel"])
        return dict(sorted(out.items()))

    # Deprecated, for one release: reading and writing a family's config.json is the families' business
    # (bertkit.model.families builds on this module), so these two reach up to it through a call-time import, the
    # one import against the layers that .importlinter lists.
    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> EncoderConfig:
        """Deprecated: ``bertkit.model.families.read_config(path)``."""
        warnings.warn("EncoderConfig.from_json_file is deprecated: use bertkit.model.families.read_config",
                      DeprecationWarning, stacklevel=2)
        from bertkit.model.families import read_config

        return read_config(path)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Deprecated: ``bertkit.model.families.write_config(cfg, directory)``."""
        warnings.warn("EncoderConfig.save is deprecated: use bertkit.model.families.write_config",
                      DeprecationWarning, stacklevel=2)
        from bertkit.model.families import write_config

        return write_config(self, directory)


FIELD_TYPES: dict[str, type] = {
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "intermediate_size": int, "hidden_act": str, "hidden_dropout_prob": float,
    "attention_probs_dropout_prob": float, "max_position_embeddings": int, "type_vocab_size": int,
    "initializer_range": float, "layer_norm_eps": float, "pad_token_id": int,
    "position_embedding_type": str, "use_cache": bool, "classifier_dropout": float,
    "model_type": str, "prenorm": bool, "ffn_type": str, "rope_theta": float, "use_bias": bool,
    "final_norm": bool, "position_offset": int, "embedding_size": int, "embedding_projection": str, "norm_bias": bool,
    "first_layer_attn_norm": bool, "relative_attention": str, "relative_attention_num_buckets": int,
    "relative_max_distance": int, "position_buckets": int, "max_relative_positions": int, "share_att_key": bool,
    "pos_att_type": list, "norm_rel_ebd": str, "layer_types": list, "local_attention": int,
    "local_rope_theta": float, "sinusoidal_positions": bool,
}


def _canonical_pruned_heads(value: Any) -> dict[int, list[int]]:
    """{layer: head ids} with int layers (JSON gives "3"), sorted unique ids, no empty lists."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config field 'pruned_heads' must be an object {{layer: [head ids]}}, got {value!r}")
    out: dict[int, list[int]] = {}
    for key, heads in value.items():
        if _type_ok(key, int):
            layer = key
        elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
            layer = int(key)
        else:
            raise ConfigError(f"config field 'pruned_heads' has key {key!r}; keys are layer numbers")
        if not isinstance(heads, (list, tuple, set)) or not all(_type_ok(h, int) for h in heads):
            raise ConfigError(f"config field 'pruned_heads' for layer {key!r} must be a list of head ids, "
                              f"got {heads!r}")
        if layer in out:
            raise ConfigError(f"config field 'pruned_heads' names layer {layer} twice")
        if heads:
            out[layer] = sorted(set(heads))
    return dict(sorted(out.items()))


def _type_ok(value: Any, want: type) -> bool:
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, want)
_FIELD_TYPES = FIELD_TYPES  # deprecated name
