"""ELECTRA (``model_type: electra``): BERT's layers under embeddings of width ``embedding_size``, LayerNorm-ed at
that width and projected to ``hidden_size`` by ``embeddings_project`` (present only when the widths differ).

The discriminator is the encoder people fine-tune; ``ElectraForPreTraining`` adds its replaced-token head
(``discriminator_predictions.dense`` -> act -> ``dense_prediction``), which continued ELECTRA training keeps. The
generator (``ElectraForMaskedLM``) is an MLM: ``generator_predictions.dense`` (hidden -> embedding) -> gelu ->
``generator_predictions.LayerNorm`` -> tied ``generator_lm_head``. Classification: ``classifier.dense`` -> gelu
-> ``classifier.out_proj`` (gelu where BERT has tanh, as the ELECTRA authors did).
"""

from __future__ import annotations

from typing import Any

from bertkit.model.config import EncoderConfig
from bertkit.model.families import bert
from bertkit.model.families.base import (
    ClassifierSpec,
    Family,
    KeyMap,
    MLMSpec,
    hf_classes,
    linear_keys,
    read_common,
    require,
    take,
    write_common,
)

DEFAULTS = {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024, "embedding_size": 128}


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    kwargs = read_common(d, DEFAULTS, used)
    kind = take(d, {"position_embedding_type": "absolute"}, used, "position_embedding_type")
    require(kind == "absolute", "electra", "position_embedding_type", kind, "only absolute positions are supported")
    e = take(d, DEFAULTS, used, "embedding_size")
    kwargs["embedding_size"] = None if e == kwargs["hidden_size"] else e
    kwargs["embedding_projection"] = "after_norm"
    kwargs["model_type"] = "electra"
    used.add("model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    return {**write_common(cfg), "model_type": "electra", "embedding_size": cfg.embedding_width,
            "position_embedding_type": "absolute"}


def encoder_keys(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    m = bert.encoder_keys(cfg, pooler)
    if cfg.embedding_size is not None:
        m.update(linear_keys(cfg, "embeddings_project", "embeddings.project", bias=True))
    return m


FAMILY = Family(
    name="electra",
    model_types=("electra",),
    prefix="electra",
    classes={"electra": hf_classes("Electra", pretraining="ElectraForPreTraining")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=encoder_keys,
    sequence=ClassifierSpec(dense="classifier.dense", activation="gelu", out="classifier.out_proj",
                            dropout_first=True),
    mlm=MLMSpec(dense="generator_predictions.dense", norm="generator_predictions.LayerNorm",
                bias="generator_lm_head.bias", decoder="generator_lm_head.weight", activation="gelu",
                width="embedding"),
    extra_heads={"pretraining": {"discriminator_predictions.dense": "dense",
                                 "discriminator_predictions.dense_prediction": "out"}},
)
