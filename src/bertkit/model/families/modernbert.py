"""ModernBERT (``model_type: modernbert``): pre-norm layers with GeGLU, no biases (``attention_bias``,
``mlp_bias``, ``norm_bias`` false), RoPE with one base for global layers and another for sliding-window ones,
local attention (``local_attention``-wide windows) in all layers but every ``global_attn_every_n_layers``-th, an
embedding norm instead of layer 0's attention norm, and a final norm. No position table, no token types.

config.json: transformers 5 writes ``layer_types`` and ``rope_parameters``; earlier checkpoints (answerdotai's)
``global_attn_every_n_layers``, ``global_rope_theta``, ``local_rope_theta``. Both are read; both are written.
Keys: ``embeddings.tok_embeddings``, ``embeddings.norm``, ``layers.N.attn.Wqkv`` (already fused, as ours),
``layers.N.attn.Wo``, ``layers.N.attn_norm`` (not in layer 0), ``layers.N.mlp.Wi`` (rows [input; gate]),
``layers.N.mlp.Wo``, ``layers.N.mlp_norm``, ``final_norm``; task checkpoints prefix them with ``model.``.
Heads: pooling (``classifier_pooling`` cls or mean) -> ``head.dense`` -> ``classifier_activation`` -> ``head.norm``
-> ``classifier``; token heads go through ``head`` too; MLM ``head`` -> tied ``decoder`` (+ bias).
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
    norm_keys,
    require,
    take,
)

DEFAULTS: dict[str, Any] = {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152,
                            "num_hidden_layers": 22, "num_attention_heads": 12, "hidden_activation": "gelu",
                            "max_position_embeddings": 8192, "initializer_range": 0.02, "norm_eps": 1e-5,
                            "norm_bias": False, "pad_token_id": 50283, "attention_bias": False,
                            "attention_dropout": 0.0, "local_attention": 128, "embedding_dropout": 0.0,
                            "mlp_bias": False, "mlp_dropout": 0.0, "global_attn_every_n_layers": 3,
                            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "classifier_dropout": 0.0}
LAYER = LayerNames(qkv="attn.Wqkv", attn_out="attn.Wo", attn_norm="attn_norm", mlp_in="mlp.Wi", mlp_out="mlp.Wo",
                   mlp_norm="mlp_norm")


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    get = lambda key: take(d, DEFAULTS, used, key)  # noqa: E731
    layers = get("num_hidden_layers")
    every = get("global_attn_every_n_layers")
    layer_types = get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    rope = get("rope_parameters") or {}
    thetas = {}
    for kind, old in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
        params = rope.get(kind) or {}
        rope_type = params.get("rope_type", "default")
        require(rope_type == "default", "modernbert", "rope_parameters", rope, "only default RoPE is supported")
        thetas[kind] = float(params.get("rope_theta", get(old)))
    require(d.get("rope_scaling") is None, "modernbert", "rope_scaling", d.get("rope_scaling"), "not supported")
    bias = get("attention_bias")
    require(bias == get("mlp_bias"), "modernbert", "mlp_bias", d.get("mlp_bias"),
            "bertkit needs attention_bias and mlp_bias equal")
    local = None if thetas["sliding_attention"] == thetas["full_attention"] else thetas["sliding_attention"]
    kwargs = dict(
        model_type="modernbert", vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
        num_hidden_layers=layers, num_attention_heads=get("num_attention_heads"),
        intermediate_size=get("intermediate_size"), hidden_act=get("hidden_activation"),
        max_position_embeddings=get("max_position_embeddings"), initializer_range=get("initializer_range"),
        layer_norm_eps=get("norm_eps"), norm_bias=get("norm_bias"), pad_token_id=get("pad_token_id"),
        use_bias=bias, attention_probs_dropout_prob=float(get("attention_dropout")),
        hidden_dropout_prob=float(get("mlp_dropout")), classifier_dropout=float(get("classifier_dropout")),
        local_attention=get("local_attention"), layer_types=list(layer_types),
        rope_theta=thetas["full_attention"], local_rope_theta=local,
        type_vocab_size=0, position_embedding_type="rope", prenorm=True, ffn_type="glu", final_norm=True,
        first_layer_attn_norm=False,
    )
    used.add("model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    types = cfg.layer_types or ["full_attention"] * cfg.num_hidden_layers
    out: dict[str, Any] = {
        "model_type": "modernbert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_activation": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings, "initializer_range": cfg.initializer_range,
        "norm_eps": cfg.layer_norm_eps, "norm_bias": cfg.norm_bias, "pad_token_id": cfg.pad_token_id,
        "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias,
        "attention_dropout": cfg.attention_probs_dropout_prob, "mlp_dropout": cfg.hidden_dropout_prob,
        "classifier_dropout": cfg.classifier_dropout if cfg.classifier_dropout is not None else 0.0,
        "local_attention": cfg.local_attention, "layer_types": list(types),
        "global_rope_theta": cfg.rope_theta, "local_rope_theta": cfg.local_rope_theta or cfg.rope_theta,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": cfg.local_rope_theta or cfg.rope_theta}},
    }
    for every in range(1, cfg.num_hidden_layers + 1):  # the older key, when the pattern is regular
        if types == ["sliding_attention" if i % every else "full_attention" for i in range(cfg.num_hidden_layers)]:
            out["global_attn_every_n_layers"] = every
            break
    return out


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m: KeyMap = {"embeddings.tok_embeddings.weight": ("embeddings.word.weight", None)}
    m.update(norm_keys(cfg, "embeddings.norm", "embeddings.norm"))
    for i in range(cfg.num_hidden_layers):
        m.update(layer_keys(cfg, i, f"layers.{i}.", LAYER))
    m.update(norm_keys(cfg, "final_norm", "final_norm"))
    return m


FAMILY = Family(
    name="modernbert",
    model_types=("modernbert",),
    prefix="model",
    classes={"modernbert": hf_classes("ModernBert")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(dense="head.dense", activation="config:classifier_activation:gelu", norm="head.norm",
                            out="classifier", pooling="config:classifier_pooling:cls",
                            dense_bias="config:classifier_bias:False"),
    token=ClassifierSpec(dense="head.dense", activation="config:classifier_activation:gelu", norm="head.norm",
                         out="classifier", pooling="token", dense_bias="config:classifier_bias:False"),
    qa=ClassifierSpec(dense="head.dense", activation="config:classifier_activation:gelu", norm="head.norm",
                      out="classifier", pooling="token", dense_bias="config:classifier_bias:False"),
    mlm=MLMSpec(dense="head.dense", norm="head.norm", bias="decoder.bias", decoder="decoder.weight",
                activation="config:classifier_activation:gelu", dense_bias="config:classifier_bias:False",
                has_bias="config:decoder_bias:True"),
)
