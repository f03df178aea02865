"""RoBERTa, XLM-RoBERTa and CamemBERT (``model_type: roberta | xlm-roberta | camembert``): BERT's layers with
positions counted from ``pad_token_id + 1`` (``position_offset``) and a byte-level BPE / SentencePiece tokenizer
with ``<s> A </s></s> B </s>`` pairs (``data/tokenizer.py`` reads the template from tokenizer.json).

Base-model keys are BERT's (``embeddings.*``, ``encoder.layer.N.*``, ``pooler.dense``); task checkpoints prefix them
with ``roberta.``. Heads: ``classifier.dense`` -> tanh -> ``classifier.out_proj`` on ``<s>``; MLM ``lm_head.dense``
-> gelu -> ``lm_head.layer_norm`` -> tied decoder + ``lm_head.bias``.
"""

from __future__ import annotations

from typing import Any

from bertkit.model.config import EncoderConfig
from bertkit.model.families import bert
from bertkit.model.families.base import (
    ClassifierSpec,
    Family,
    MLMSpec,
    hf_classes,
    read_common,
    require,
    take,
    write_common,
)

DEFAULTS = {"vocab_size": 50265, "pad_token_id": 1, "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def from_hf(d: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()
    kwargs = read_common(d, DEFAULTS, used)
    kind = take(d, {"position_embedding_type": "absolute"}, used, "position_embedding_type")
    require(kind == "absolute", "roberta", "position_embedding_type", kind, "only absolute positions are supported")
    pad = kwargs["pad_token_id"]
    require(isinstance(pad, int) and not isinstance(pad, bool), "roberta", "pad_token_id", pad,
            "positions count from pad_token_id + 1, so it must be an integer")
    kwargs["position_offset"] = pad + 1  # create_position_ids_from_input_ids
    kwargs["model_type"] = take(d, {"model_type": "roberta"}, used, "model_type")
    return kwargs, used


def to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    return {**write_common(cfg), "model_type": cfg.model_type, "position_embedding_type": "absolute"}


FAMILY = Family(
    name="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    prefix="roberta",
    classes={"roberta": hf_classes("Roberta"), "xlm-roberta": hf_classes("XLMRoberta"),
             "camembert": hf_classes("Camembert")},
    defaults=DEFAULTS,
    from_hf=from_hf,
    to_hf=to_hf,
    encoder_keys=bert.encoder_keys,
    sequence=ClassifierSpec(dense="classifier.dense", activation="tanh", out="classifier.out_proj",
                            dropout_first=True),
    mlm=MLMSpec(dense="lm_head.dense", norm="lm_head.layer_norm", bias="lm_head.bias",
                decoder="lm_head.decoder.weight", decoder_bias="lm_head.decoder.bias", activation="gelu"),
)
