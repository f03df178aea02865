"""MPNet (``model_type: mpnet``; all-mpnet-base-v2 is the most used sentence-transformers model): BERT's post-norm
layers, absolute positions counted from 2 (``padding_idx`` 1 + 1, fixed in transformers whatever ``pad_token_id``
says), no token types, and a learned per-head bias of the bucketed distance j - i (T5 buckets: 32, distance 128)
shared by every layer (``relative_attention: bucket_bias``). Tokenizer: WordPiece with ``<s>``/``</s>`` specials.

Keys: ``embeddings.{word,position}_embeddings``, ``embeddings.LayerNorm``, ``encoder.layer.N.attention.attn.
{q,k,v,o}``, ``attention.LayerNorm``, ``intermediate.dense``, ``output.dense``, ``output.LayerNorm``,
``encoder.relative_attention_bias``, ``pooler.dense``. Heads as RoBERTa's.
"""

from __future__ import annotations

from typing import Any

from bertkit.model.config import EncoderConfig
from bertkit.model.families.base import (
    ClassifierSpec,
    Family,
    KeyMap,
    LayerNames,
    MLMSpec,
    hf_classes,
    layer_keys,
    linear_keys,
    norm_keys,
    read_common,
    take,
    write_common,
)

DEFAULTS: dict[str, Any] = {"vocab_size": 30527, "pad_token_id": 1, "relative_attention_num_buckets": 32}
FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
          "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "initializer_range",
          "layer_norm_eps", "pad_token_id")
LAYER = LayerNames(q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", attn_out="attention.attn.o",
                   attn_norm="attention.LayerNorm")


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    kwargs = read_common(d, DEFAULTS, used, FIELDS)
    kwargs.update(type_vocab_size=0, position_offset=2, relative_attention="bucket_bias", model_type="mpnet",
                  relative_attention_num_buckets=take(d, DEFAULTS, used, "relative_attention_num_buckets"))
    used.add("model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    return {**write_common(cfg, FIELDS), "model_type": "mpnet",
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets}


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m: KeyMap = {"embeddings.word_embeddings.weight": ("embeddings.word.weight", None),
                 "embeddings.position_embeddings.weight": ("embeddings.position.weight", None)}
    m.update(norm_keys(cfg, "embeddings.LayerNorm", "embeddings.norm"))
    for i in range(cfg.num_hidden_layers):
        m.update(layer_keys(cfg, i, f"encoder.layer.{i}.", LAYER))
    m["encoder.relative_attention_bias.weight"] = ("rel.bucket.weight", None)
    if pooler:
        m.update(linear_keys(cfg, "pooler.dense", "pooler.dense", bias=True))
    return m


FAMILY = Family(
    name="mpnet",
    model_types=("mpnet",),
    prefix="mpnet",
    classes={"mpnet": hf_classes("MPNet")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(dense="classifier.dense", activation="tanh", out="classifier.out_proj",
                            dropout_first=True),
    mlm=MLMSpec(dense="lm_head.dense", norm="lm_head.layer_norm", bias="lm_head.bias",
                decoder="lm_head.decoder.weight", decoder_bias="lm_head.decoder.bias", activation="gelu"),
)
