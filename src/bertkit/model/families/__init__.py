"""Every encoder family behind one table: ``model_type`` -> ``Family`` (see ``base.py``).

``read_config(path)``          a family's config.json -> ``EncoderConfig`` (unknown model_type: an error listing the
                               supported ones)
``write_config(cfg, dir)``     ``EncoderConfig`` -> config.json in the family's own layout, refusing settings the
                               family cannot express (checked by translating back)
``family_of(cfg)``             the ``Family`` of a config
``role_of(architecture)``      "BertForSequenceClassification" -> (family, "sequence")
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bertkit.errors import ConfigError
from bertkit.model.config import FIELD_TYPES, PRUNING_FIELDS, EncoderConfig
from bertkit.model.families import bert, deberta_v2, distilbert, electra, modernbert, mpnet, roberta
from bertkit.model.families.base import ROLES, ClassifierSpec, Family, KeyMap, MLMSpec, config_value
from bertkit.utils.atomic import atomic_write_text

FAMILIES: dict[str, Family] = {f.name: f for f in (bert.FAMILY, roberta.FAMILY, deberta_v2.FAMILY, modernbert.FAMILY,
                                                   electra.FAMILY, distilbert.FAMILY, mpnet.FAMILY)}
_BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}
MODEL_TYPES = tuple(_BY_MODEL_TYPE)

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "ROLES",
    "ClassifierSpec",
    "Family",
    "KeyMap",
    "MLMSpec",
    "config_from_hf",
    "config_value",
    "describe_architecture",
    "family_for_model_type",
    "family_of",
    "hf_config",
    "read_config",
    "role_of",
    "write_config",
]


def family_for_model_type(model_type: Any, source: object = "config.json") -> Family:
    family = _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported: "
                          f"{', '.join(MODEL_TYPES)}")
    return family


def family_of(cfg: EncoderConfig) -> Family:
    return family_for_model_type(cfg.model_type, "config")


def role_of(architecture: str) -> tuple[Family, str] | None:
    """The family and role ("encoder", "sequence", "token", "mlm", "pretraining") of a transformers class name."""
    for family in FAMILIES.values():
        for classes in family.classes.values():
            for role, name in classes.items():
                if name == architecture:
                    return family, role
    return None


def config_from_hf(d: dict[str, Any], source: object = "config.json") -> EncoderConfig:
    """A family's config dict -> EncoderConfig; keys the family does not read are kept in ``extra``."""
    family = family_for_model_type(d.get("model_type", "bert"), source)
    try:
        kwargs, used = family.from_hf(d)
        kwargs.update({k: d[k] for k in PRUNING_FIELDS if k in d})  # structured pruning's keys, in every family
        used.update(PRUNING_FIELDS)
        for k, v in kwargs.items():  # JSON has one number type: accept 1 for a float field, as transformers does
            if FIELD_TYPES.get(k) is float and isinstance(v, int) and not isinstance(v, bool):
                kwargs[k] = float(v)
        extra = {k: v for k, v in d.items() if k not in used}
        return EncoderConfig(**kwargs, extra=extra)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:  # a field of the wrong JSON type reaching arithmetic in a translation
        raise ConfigError(f"{source}: {e}") from None


def hf_config(cfg: EncoderConfig, architecture: str | None = None) -> dict[str, Any]:
    """The config.json dict of ``cfg`` in its family's layout; ``architecture`` sets ``architectures``.

    Refuses (ConfigError naming the fields) a config its family cannot express, e.g. RoBERTa with rope.
    """
    family = family_of(cfg)
    own = {**family.to_hf(cfg), **{k: v for k, v in cfg.to_dict().items() if k in PRUNING_FIELDS}}
    if family.name != "bert":  # bert writes every field; the others must translate back to the same config
        back = config_from_hf({**own, **{k: v for k, v in cfg.extra.items() if k not in own}})
        differ = [f.name for f in dataclasses.fields(EncoderConfig)
                  if f.name != "extra" and getattr(back, f.name) != getattr(cfg, f.name)]
        if differ:
            shown = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in differ)
            raise ConfigError(f"family {family.name} cannot express these settings: {shown} "
                              f"(use model_type 'bert', which takes every bertkit option)")
    out = {k: v for k, v in cfg.extra.items() if k not in own}
    out.update(own)
    if architecture is not None:
        out["architectures"] = [architecture]
    out.setdefault("architectures", [family.architecture(cfg.model_type, "encoder")])
    return dict(sorted(out.items()))


def describe_architecture(cfg: EncoderConfig) -> str:
    """One line for ``bertkit info``: the transformers class and the options that shape the layers."""
    parts = ["pre-norm" if cfg.prenorm else "post-norm"]
    if cfg.ffn_type == "glu":
        parts.append(f"{cfg.hidden_act} GLU")
    positions = {"absolute": "absolute positions", "rope": "RoPE", "alibi": "ALiBi", "none": "no absolute positions"}
    parts.append(positions[cfg.position_embedding_type]
                 + (f" from {cfg.position_offset}" if cfg.position_offset and cfg.position_embedding_type == "absolute"
                    else ""))
    if cfg.relative_attention == "bucket_bias":
        parts.append("relative bucket bias")
    elif cfg.relative_attention == "disentangled":
        parts.append(f"disentangled attention ({'+'.join(cfg.pos_att_type) or 'content only'})")
    if cfg.layer_types and "sliding_attention" in cfg.layer_types:
        n = cfg.layer_types.count("sliding_attention")
        parts.append(f"{n} of {cfg.num_hidden_layers} layers sliding-window ({cfg.local_attention})")
    if cfg.embedding_size is not None:
        parts.append(f"embeddings {cfg.embedding_size} wide")
    if not cfg.use_bias:
        parts.append("no biases")
    return f"{family_of(cfg).architecture(cfg.model_type, 'encoder')} ({', '.join(parts)})"


def read_config(path: str | os.PathLike[str]) -> EncoderConfig:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return config_from_hf(d, path)


def write_config(cfg: EncoderConfig, directory: str | os.PathLike[str], architecture: str | None = None) -> Path:
    path = Path(directory) / "config.json"
    atomic_write_text(path, json.dumps(hf_config(cfg, architecture), indent=2) + "\n")
    return path
