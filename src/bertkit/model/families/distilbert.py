"""DistilBERT (``model_type: distilbert``): BERT's post-norm layers under other names, no token types, no pooler,
LayerNorm eps fixed at 1e-12, and optionally a sinusoidal position table (``sinusoidal_pos_embds``; the table is
stored in the checkpoint all the same).

config.json: ``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``, ``activation``, ``dropout``, ``attention_dropout``.
Keys: ``embeddings.{word,position}_embeddings``, ``embeddings.LayerNorm``, ``transformer.layer.N.attention.
{q_lin,k_lin,v_lin,out_lin}``, ``sa_layer_norm``, ``ffn.lin1``, ``ffn.lin2``, ``output_layer_norm``.
Heads: ``pre_classifier`` -> ReLU -> dropout -> ``classifier`` on the first token; MLM ``vocab_transform`` -> act ->
``vocab_layer_norm`` -> tied ``vocab_projector``.
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
    take,
)

DEFAULTS: dict[str, Any] = {"vocab_size": 30522, "max_position_embeddings": 512, "sinusoidal_pos_embds": False,
                            "n_layers": 6, "n_heads": 12, "dim": 768, "hidden_dim": 3072, "dropout": 0.1,
                            "attention_dropout": 0.1, "activation": "gelu", "initializer_range": 0.02,
                            "pad_token_id": 0}
# HF name -> ours
NAMES = {"vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
         "sinusoidal_pos_embds": "sinusoidal_positions", "n_layers": "num_hidden_layers",
         "n_heads": "num_attention_heads", "dim": "hidden_size", "hidden_dim": "intermediate_size",
         "dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob",
         "activation": "hidden_act", "initializer_range": "initializer_range", "pad_token_id": "pad_token_id"}
LAYER = LayerNames(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", attn_out="attention.out_lin",
                   attn_norm="sa_layer_norm", mlp_in="ffn.lin1", mlp_out="ffn.lin2", mlp_norm="output_layer_norm")


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    kwargs = {ours: take(d, DEFAULTS, used, hf) for hf, ours in NAMES.items()}
    kwargs.update(type_vocab_size=0, layer_norm_eps=1e-12, model_type="distilbert")
    used.add("model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    return {**{hf: getattr(cfg, ours) for hf, ours in NAMES.items()}, "model_type": "distilbert"}


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m: KeyMap = {"embeddings.word_embeddings.weight": ("embeddings.word.weight", None),
                 "embeddings.position_embeddings.weight": ("embeddings.position.weight", None)}
    m.update(norm_keys(cfg, "embeddings.LayerNorm", "embeddings.norm"))
    for i in range(cfg.num_hidden_layers):
        m.update(layer_keys(cfg, i, f"transformer.layer.{i}.", LAYER))
    return m


FAMILY = Family(
    name="distilbert",
    model_types=("distilbert",),
    prefix="distilbert",
    classes={"distilbert": hf_classes("DistilBert")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(dense="pre_classifier", activation="relu", out="classifier"),
    mlm=MLMSpec(dense="vocab_transform", norm="vocab_layer_norm", bias="vocab_projector.bias",
                decoder="vocab_projector.weight"),
)
