"""What a family is: a config translation, a key map and its head layouts - never a copy of the layer.

Every family module (``bert.py``, ``roberta.py``, ...) builds one ``Family``:

``from_hf``       the family's config.json (its HF config class's defaults filled in) -> ``EncoderConfig`` keyword
                  arguments; the keys it consumes are listed, every other key is kept in ``extra``
``to_hf``         ``EncoderConfig`` -> the family's config.json keys (``extra`` is added back by the caller)
``encoder_keys``  HF key -> (our parameter, row slice or None) for the base model (``XxxModel``), asserted
                  against the model's own state dict on every load and save (``weights.py``)
``sequence``, ``token``, ``qa``, ``mlm``  how the family's ``XxxForSequenceClassification``,
                  ``XxxForTokenClassification``, ``XxxForQuestionAnswering`` and ``XxxForMaskedLM`` heads are laid
                  out (names, activations)
``classes``       model_type -> role -> the transformers class name written to ``architectures``
``prefix``        the base model's prefix inside task checkpoints (``roberta.``, ``deberta.``, ``model.`` ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bertkit.errors import ConfigError
from bertkit.model.config import EncoderConfig

KeyMap = dict[str, tuple[str, slice | None]]  # HF key -> (our key, row slice of our tensor or None)
ROLES = ("encoder", "sequence", "token", "qa", "mlm", "pretraining")


@dataclass(frozen=True)
class ClassifierSpec:
    """A classification head: pool -> [dropout] -> dense -> activation -> [norm] -> dropout -> out.

    dense:        HF name of the Linear before ``out`` (None: no such layer; with ``uses_pooler`` BERT's own pooler
                  in the encoder plays it, dense + tanh)
    activation:   an activation name, or "config:<key>" to read it from the config's ``extra`` (with a default
                  after a second colon, "config:classifier_activation:gelu")
    norm:         HF name of a LayerNorm after the activation (ModernBERT), or None
    out:          HF name of the output Linear
    pooling:      "cls", "mean", "config:classifier_pooling:cls", or "token" (token classification: no pooling)
    dense_bias:   "config:<key>:<default>" or True
    """

    out: str
    dense: str | None = None
    activation: str = "tanh"
    norm: str | None = None
    pooling: str = "cls"
    dropout_first: bool = False
    uses_pooler: bool = False
    dense_bias: bool | str = True


@dataclass(frozen=True)
class MLMSpec:
    """A masked-LM head: dense -> activation -> LayerNorm -> tied decoder + bias.

    ``dense``/``norm``/``bias``: HF names; ``decoder``: the tied decoder weight's name (equal to the word embeddings;
    never stored twice by us, accepted when a checkpoint has it); ``decoder_bias``: another name the bias may carry;
    ``width``: "hidden" or "embedding" (ELECTRA's generator and DeBERTa project back to the embedding width).
    """

    dense: str
    norm: str
    bias: str
    decoder: str
    decoder_bias: str | None = None
    activation: str = "config:hidden_act"
    width: str = "hidden"
    dense_bias: bool | str = True
    has_bias: bool | str = True


# Every family but ModernBERT: dropout, then one Linear named "classifier" on each token's state.
TOKEN_CLASSIFIER = ClassifierSpec(out="classifier", pooling="token")
# Every family but ModernBERT: one Linear(hidden, 2) named "qa_outputs" (start, end logits) on each token's state.
QA_OUTPUTS = ClassifierSpec(out="qa_outputs", pooling="token")


def hf_classes(name: str, **more: str) -> dict[str, str]:
    """transformers' class names of a family, by role: ``hf_classes("Bert", pretraining="BertForPreTraining")``."""
    return {"encoder": f"{name}Model", "sequence": f"{name}ForSequenceClassification",
            "token": f"{name}ForTokenClassification", "qa": f"{name}ForQuestionAnswering",
            "mlm": f"{name}ForMaskedLM", **more}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    prefix: str
    classes: dict[str, dict[str, str]]
    defaults: dict[str, Any]
    from_hf: Callable[[dict[str, Any]], tuple[dict[str, Any], set[str]]]
    to_hf: Callable[[EncoderConfig], dict[str, Any]]
    encoder_keys: Callable[[EncoderConfig, bool], KeyMap]
    sequence: ClassifierSpec
    mlm: MLMSpec
    token: ClassifierSpec = TOKEN_CLASSIFIER
    qa: ClassifierSpec = QA_OUTPUTS
    extra_heads: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {HF name: ours} (ELECTRA's)

    def architecture(self, model_type: str, role: str) -> str:
        return self.classes.get(model_type, self.classes[self.model_types[0]])[role]


# ---- helpers the family modules share ------------------------------------------------------------
def linear_keys(cfg: EncoderConfig, hf: str, ours: str, rows: slice | None = None, bias: bool | None = None) -> KeyMap:
    with_bias = cfg.use_bias if bias is None else bias
    return {f"{hf}.{p}": (f"{ours}.{p}", rows) for p in (("weight", "bias") if with_bias else ("weight",))}


def norm_keys(cfg: EncoderConfig, hf: str, ours: str, bias: bool | None = None) -> KeyMap:
    with_bias = cfg.norm_bias if bias is None else bias
    return {f"{hf}.{p}": (f"{ours}.{p}", None) for p in (("weight", "bias") if with_bias else ("weight",))}


@dataclass(frozen=True)
class LayerNames:
    """HF names (relative to one layer) of the parts of our ``Layer``; q/k/v map into row slices of ``Wqkv``
    unless ``qkv`` names one fused tensor."""

    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    attn_out: str = "attention.output.dense"
    attn_norm: str = "attention.output.LayerNorm"
    mlp_in: str = "intermediate.dense"
    mlp_out: str = "output.dense"
    mlp_norm: str = "output.LayerNorm"


def layer_keys(cfg: EncoderConfig, i: int, hf: str, names: LayerNames) -> KeyMap:
    """Keys of layer ``i`` (HF prefix ``hf``, e.g. "encoder.layer.3.") -> ours ("layers.3.")."""
    ours = f"layers.{i}."
    m: KeyMap = {}
    if names.qkv:
        m.update(linear_keys(cfg, hf + names.qkv, ours + "Wqkv"))
    else:
        a = len(cfg.layer_heads(i)) * cfg.head_dim  # hidden, unless heads were pruned
        for j, name in enumerate((names.q, names.k, names.v)):
            m.update(linear_keys(cfg, hf + name, ours + "Wqkv", slice(j * a, (j + 1) * a)))
    m.update(linear_keys(cfg, hf + names.attn_out, ours + "attn_out"))
    if not (cfg.prenorm and i == 0 and not cfg.first_layer_attn_norm):
        m.update(norm_keys(cfg, hf + names.attn_norm, ours + "attn_norm"))
    m.update(linear_keys(cfg, hf + names.mlp_in, ours + "mlp_in"))
    m.update(linear_keys(cfg, hf + names.mlp_out, ours + "mlp_out"))
    m.update(norm_keys(cfg, hf + names.mlp_norm, ours + "mlp_norm"))
    return m


# BertConfig's names, which most families share; each family gives its own defaults for them.
COMMON_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                 "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "classifier_dropout")
BERT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    "pad_token_id": 0, "classifier_dropout": None,
}


def read_common(d: dict[str, Any], defaults: dict[str, Any], used: set[str],
                fields: tuple[str, ...] = COMMON_FIELDS) -> dict[str, Any]:
    """The BertConfig-named fields of ``d`` (family defaults where absent) as EncoderConfig kwargs."""
    merged = {**BERT_DEFAULTS, **defaults}
    return {k: take(d, merged, used, k) for k in fields}


def write_common(cfg: EncoderConfig, fields: tuple[str, ...] = COMMON_FIELDS) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in fields}


def take(d: dict[str, Any], defaults: dict[str, Any], used: set[str], key: str) -> Any:
    """d[key], else the family's default; records the key as consumed."""
    used.add(key)
    return d.get(key, defaults.get(key))


def require(condition: bool, family: str, field_name: str, value: Any, why: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{field_name}' is {value!r}: {why} (family {family})")


def config_value(cfg: EncoderConfig, spec: str | bool | None, default: Any = None) -> Any:
    """Resolve "config:<key>[:<default>]" against the config (its fields, then ``extra``); other values as given."""
    if not isinstance(spec, str) or not spec.startswith("config:"):
        return spec if spec is not None else default
    _, key, *rest = spec.split(":")
    fallback = rest[0] if rest else default
    if hasattr(cfg, key) and key != "extra":
        value = getattr(cfg, key)
    else:
        value = cfg.extra.get(key, fallback)
    if isinstance(fallback, str) and fallback in ("True", "False"):
        value = value if isinstance(value, bool) else fallback == "True"
    return value
