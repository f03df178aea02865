"""BERT (``model_type: bert``): the canonical family, plus the MosaicBERT / ModernBERT-style options of ours.

config.json is ``EncoderConfig``'s canonical form (``BertConfig`` fields, our options written only when set).
Keys: ``embeddings.{word,position,token_type}_embeddings``, ``embeddings.LayerNorm``,
``encoder.layer.N.attention.self.{query,key,value}`` (rows of our fused ``Wqkv``), ``attention.output.dense``,
``attention.output.LayerNorm``, ``intermediate.dense``, ``output.dense``, ``output.LayerNorm``, ``pooler.dense``;
``encoder.final_norm`` (ours: BertModel has none). Options change the key set, not the names: ``use_bias=False``
drops the layers' Linear biases, rope / alibi drop the position table, GLU keeps ``intermediate.dense`` at
(2 * intermediate, hidden) with rows [gate; up], pre-norm keeps the two LayerNorm names for the norms before
attention / FFN.
"""

from __future__ import annotations

import dataclasses
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
)

LAYER = LayerNames(q="attention.self.query", k="attention.self.key", v="attention.self.value")


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"extra"}
    kwargs = {k: v for k, v in d.items() if k in known}
    return kwargs, set(kwargs)


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}  # to_dict merges extra in: leave it out
    return {k: v for k, v in cfg.to_dict().items() if k in fields}


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m: KeyMap = {"embeddings.word_embeddings.weight": ("embeddings.word.weight", None)}
    if cfg.position_embedding_type == "absolute":
        m["embeddings.position_embeddings.weight"] = ("embeddings.position.weight", None)
    if cfg.type_vocab_size > 0:
        m["embeddings.token_type_embeddings.weight"] = ("embeddings.token_type.weight", None)
    m.update(norm_keys(cfg, "embeddings.LayerNorm", "embeddings.norm"))
    for i in range(cfg.num_hidden_layers):
        m.update(layer_keys(cfg, i, f"encoder.layer.{i}.", LAYER))
    if cfg.final_norm:
        m.update(norm_keys(cfg, "encoder.final_norm", "final_norm"))
    if pooler:
        m.update(linear_keys(cfg, "pooler.dense", "pooler.dense", bias=True))
    return m


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    prefix="bert",
    classes={"bert": hf_classes("Bert", pretraining="BertForPreTraining")},
    defaults={},
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(out="classifier", uses_pooler=True),
    mlm=MLMSpec(dense="cls.predictions.transform.dense", norm="cls.predictions.transform.LayerNorm",
                bias="cls.predictions.bias", decoder="cls.predictions.decoder.weight",
                decoder_bias="cls.predictions.decoder.bias"),
)
