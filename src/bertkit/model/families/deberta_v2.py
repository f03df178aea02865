"""DeBERTa-v2 and v3 (``model_type: deberta-v2``): BERT's post-norm layers with disentangled attention.

scores(i, j) = [q_i.k_j + q_i.P_k[r(i, j)] (c2p) + k_j.P_q[r(i, j)] (p2c)] / sqrt(head_dim * (1 + #pos_att_type))
with P the relative embeddings (``encoder.rel_embeddings``, LayerNorm-ed when ``norm_rel_ebd`` says so) through the
layer's key / query projections (``share_att_key``) or its own ``pos_key_proj`` / ``pos_query_proj``, and r(i, j)
the log-bucketed distance i - j (``position_buckets``, ``max_relative_positions``); see ``model/positions.py``.
v3: ``position_biased_input: false`` (no absolute table), ``type_vocab_size: 0``, a Unigram tokenizer.

Not supported (an error names the field): the convolution layer (``conv_kernel_size`` > 0), ``attention_head_size``
other than hidden / heads, ``pos_att_type`` entries other than c2p / p2c, ``legacy: false`` MLM heads.

Keys: ``embeddings.{word,position,token_type}_embeddings`` (when present), ``embeddings.embed_proj`` (narrow
embeddings), ``embeddings.LayerNorm``, ``encoder.layer.N.attention.self.{query,key,value}_proj``,
``pos_key_proj`` / ``pos_query_proj``, BERT's output / intermediate names, ``encoder.rel_embeddings``,
``encoder.LayerNorm``. Heads: ``pooler.dense`` (ContextPooler) -> ``pooler_hidden_act`` -> ``classifier``; MLM in
transformers' legacy layout ``cls.predictions.*`` (projecting back to ``embedding_size``).
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
    require,
    take,
    write_common,
)

DEFAULTS: dict[str, Any] = {"vocab_size": 128100, "hidden_size": 1536, "num_hidden_layers": 24,
                            "num_attention_heads": 24, "intermediate_size": 6144, "type_vocab_size": 0,
                            "layer_norm_eps": 1e-7, "relative_attention": False, "max_relative_positions": -1,
                            "pad_token_id": 0, "position_biased_input": True, "pos_att_type": None,
                            "position_buckets": -1, "share_att_key": False, "norm_rel_ebd": "none",
                            "conv_kernel_size": 0, "legacy": True}
LAYER = LayerNames(q="attention.self.query_proj", k="attention.self.key_proj", v="attention.self.value_proj")


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    kwargs = read_common(d, DEFAULTS, used)
    get = lambda key: take(d, DEFAULTS, used, key)  # noqa: E731
    require(not get("conv_kernel_size"), "deberta-v2", "conv_kernel_size", d.get("conv_kernel_size"),
            "the convolution layer is not implemented")
    require(get("legacy") is not False, "deberta-v2", "legacy", False, "only the legacy MLM head layout is supported")
    head_size = get("attention_head_size")
    require(head_size in (None, kwargs["hidden_size"] // max(kwargs["num_attention_heads"], 1)), "deberta-v2",
            "attention_head_size", head_size, "heads must split hidden_size evenly")
    kinds = get("pos_att_type") or []
    if isinstance(kinds, str):  # "p2c|c2p", as DebertaV2Config splits it
        kinds = [x.strip() for x in kinds.lower().split("|")]
    require(all(k in ("c2p", "p2c") for k in kinds), "deberta-v2", "pos_att_type", kinds,
            "supported: c2p, p2c")
    norm = get("norm_rel_ebd")
    norms = [x.strip() for x in str(norm).lower().split("|")]
    require(all(x in ("none", "layer_norm") for x in norms), "deberta-v2", "norm_rel_ebd", norm,
            "supported: none, layer_norm")
    e = get("embedding_size")
    kwargs.update(
        model_type="deberta-v2",
        position_embedding_type="absolute" if get("position_biased_input") else "none",
        relative_attention="disentangled" if get("relative_attention") else "none",
        pos_att_type=[k for k in ("c2p", "p2c") if k in kinds],
        position_buckets=get("position_buckets"),
        max_relative_positions=get("max_relative_positions"),
        share_att_key=bool(get("share_att_key")),
        norm_rel_ebd="layer_norm" if "layer_norm" in norms else "none",
        embedding_size=None if e in (None, kwargs["hidden_size"]) else e,
        embedding_projection="before_norm",
    )
    used.add("model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    out = {**write_common(cfg), "model_type": "deberta-v2",
           "position_biased_input": cfg.position_embedding_type == "absolute",
           "relative_attention": cfg.relative_attention == "disentangled",
           "pos_att_type": list(cfg.pos_att_type), "position_buckets": cfg.position_buckets,
           "max_relative_positions": cfg.max_relative_positions, "share_att_key": cfg.share_att_key,
           "norm_rel_ebd": cfg.norm_rel_ebd}
    if cfg.embedding_size is not None:
        out["embedding_size"] = cfg.embedding_size
    return out


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m: KeyMap = {"embeddings.word_embeddings.weight": ("embeddings.word.weight", None)}
    if cfg.position_embedding_type == "absolute":
        m["embeddings.position_embeddings.weight"] = ("embeddings.position.weight", None)
    if cfg.type_vocab_size > 0:
        m["embeddings.token_type_embeddings.weight"] = ("embeddings.token_type.weight", None)
    if cfg.embedding_size is not None:
        m["embeddings.embed_proj.weight"] = ("embeddings.project.weight", None)
    m.update(norm_keys(cfg, "embeddings.LayerNorm", "embeddings.norm"))
    for i in range(cfg.num_hidden_layers):
        hf = f"encoder.layer.{i}."
        m.update(layer_keys(cfg, i, hf, LAYER))
        if cfg.relative_attention == "disentangled" and not cfg.share_att_key:
            if "c2p" in cfg.pos_att_type:
                m.update(linear_keys(cfg, hf + "attention.self.pos_key_proj", f"layers.{i}.pos_k", bias=True))
            if "p2c" in cfg.pos_att_type:
                m.update(linear_keys(cfg, hf + "attention.self.pos_query_proj", f"layers.{i}.pos_q", bias=True))
    if cfg.relative_attention == "disentangled":
        m["encoder.rel_embeddings.weight"] = ("rel.embeddings.weight", None)
        if cfg.norm_rel_ebd == "layer_norm":
            m.update(norm_keys(cfg, "encoder.LayerNorm", "rel.norm"))
    return m


FAMILY = Family(
    name="deberta-v2",
    model_types=("deberta-v2",),
    prefix="deberta",
    classes={"deberta-v2": hf_classes("DebertaV2")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(dense="pooler.dense", activation="config:pooler_hidden_act:gelu", out="classifier",
                            dropout_first=True),
    mlm=MLMSpec(dense="cls.predictions.transform.dense", norm="cls.predictions.transform.LayerNorm",
                bias="cls.predictions.bias", decoder="cls.predictions.decoder.weight",
                decoder_bias="cls.predictions.decoder.bias", width="embedding"),
)
