"""A model's own embedding settings: the sentence-transformers files of a model directory.

``modules.json`` lists a pipeline, each module in its own folder with its own config (the layout of
sentence-transformers 2.x to 6.3, which this reads and writes):

    Transformer  the encoder (in the root, or e.g. 0_Transformer); sentence_bert_config.json: max_seq_length,
                 do_lower_case
    Pooling      1_Pooling/config.json: the modes (concatenated in order) and include_prompt
    Dense        n_Dense/config.json + weights: a linear layer, its activation, an optional residual
    Normalize    L2-normalize the sentence embedding (present or not)

and ``config_sentence_transformers.json`` holds the model-level settings: ``prompts`` (name -> text
prepended to every input), ``default_prompt_name`` and ``similarity_fn_name``.

``SentenceConfig.read`` turns a directory into one ``SentenceConfig``; a directory without modules.json
gets bertkit's defaults (mean pooling, normalized, no prompts). ``SentenceConfig.save`` is the one writer:
each module class says what it saves (``save``) and how it loads (``load``), sentence-transformers'
``config_keys`` style, and the writer only walks the modules.

Prompts work as in sentence-transformers: a prompt is prepended to the text before tokenization; with
``include_prompt=False`` pooling leaves out [CLS] and the prompt's tokens (the prompt tokenized alone,
less its trailing [SEP]). "query" and "document" always exist (empty unless the model sets them), so
``embed(prompt_name="query")`` works on any model, as ``SentenceTransformer.encode_query`` does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.errors import CheckpointError, ConfigError
from bertkit.model.attention import Packing
from bertkit.model.pooling import POOLING_MODES, pool, pooling_modes
from bertkit.model.weights import WEIGHT_FILES, read_state_dict, write_safetensors
from bertkit.utils.atomic import atomic_write_text

log = logging.getLogger("bertkit")

MODULES_FILE, MODEL_FILE = "modules.json", "config_sentence_transformers.json"
TYPE_PREFIX = "sentence_transformers."  # a module type is sentence_transformers.<...>.<ClassName>
ROLE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}  # encode_query / _document
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
# Dense activations, stored by their torch class path (sentence-transformers' fullname); nothing else is
# imported from a config file.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    f"{c.__module__}.{c.__name__}": c
    for c in (nn.Identity, nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus,
              nn.Mish, nn.Hardtanh)
}
_SHORT_ACTIVATIONS = {f"torch.nn.{c.__name__}": name for name, c in ACTIVATIONS.items()}  # torch.nn.Tanh
_LEGACY_POOLING = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                   "mean": "pooling_mode_mean_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                   "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def _read_json(path: Path, required: bool = True, kind: type = dict) -> Any:
    """A JSON object (or, with ``kind=list``, array) from ``path``; {} for an optional file that is absent."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing")
        return kind()
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: expected a JSON {'array' if kind is list else 'object'}, got "
                          f"{type(value).__name__}")
    return value


def _field(cfg: dict[str, Any], key: str, kind: type, where: Path, default: Any = None) -> Any:
    """cfg[key] of type ``kind`` (a bool is not an int here), or ``default`` when absent or null."""
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: field {key!r} must be {'true or false' if kind is bool else kind.__name__}, "
                          f"got {value!r}")
    return value


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# ---- the modules: each loads from and saves to its own folder ------------------------------------
@dataclass
class Transformer:
    """Module 0: the encoder itself (the weights loader reads it from its folder: the directory root, or a
    subfolder in old saves); here only the settings its sentence_bert_config.json holds. Written to the root."""

    NAME: ClassVar[str] = "Transformer"
    IN_ROOT: ClassVar[bool] = True
    CONFIG: ClassVar[str] = "sentence_bert_config.json"
    max_seq_length: int | None = None
    do_lower_case: bool = False

    @classmethod
    def load(cls, path: Path) -> Transformer:
        f = path / cls.CONFIG
        cfg = _read_json(f, required=False)
        return cls(_field(cfg, "max_seq_length", int, f), _field(cfg, "do_lower_case", bool, f, False))

    def save(self, path: Path) -> None:
        _write_json(path / self.CONFIG, {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case})


@dataclass
class Pooling:
    """Token states -> one vector: the modes, concatenated in order (see bertkit.model.pooling)."""

    NAME: ClassVar[str] = "Pooling"
    IN_ROOT: ClassVar[bool] = False
    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dim: int = 0  # the token states' size (sentence-transformers' embedding_dimension); 0: not known yet

    @property
    def out_dim(self) -> int:
        return len(self.modes) * self.dim

    @classmethod
    def load(cls, path: Path) -> Pooling:
        f = path / "config.json"
        cfg = _read_json(f, required=False)
        dim = _field(cfg, "embedding_dimension", int, f) or _field(cfg, "word_embedding_dimension", int, f, 0)
        mode = cfg.get("pooling_mode")
        if mode is None:  # sentence-transformers < 5.4: one boolean per mode, concatenated in this order
            bad = [k for k in _LEGACY_POOLING.values() if not isinstance(cfg.get(k, False), bool)]
            if bad:
                raise ConfigError(f"{f}: field {bad[0]!r} must be true or false, got {cfg[bad[0]]!r}")
            mode = [m for m, key in _LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]
        try:
            modes = pooling_modes(mode)
        except ValueError:
            raise ConfigError(f"{f}: pooling_mode {mode!r} is not supported; the modes are "
                              f"{', '.join(POOLING_MODES)}") from None
        return cls(modes, _field(cfg, "include_prompt", bool, f, True), dim)

    def save(self, path: Path) -> None:
        legacy = tuple(m for m in _LEGACY_POOLING if m in self.modes)
        if legacy == self.modes:  # the boolean form: every sentence-transformers version reads it
            cfg: dict[str, Any] = {"word_embedding_dimension": self.dim,
                                   **{key: m in self.modes for m, key in _LEGACY_POOLING.items()}}
        else:  # an order the booleans cannot say
            cfg = {"embedding_dimension": self.dim, "pooling_mode": list(self.modes)}
        _write_json(path / "config.json", {**cfg, "include_prompt": self.include_prompt})


class Dense(nn.Module):
    """A linear layer on the sentence embedding, then its activation; ``use_residual`` adds the input back
    (through a bias-free projection when the sizes differ)."""

    NAME: ClassVar[str] = "Dense"
    IN_ROOT: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "torch.nn.modules.activation.Tanh", use_residual: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.use_residual = in_features, out_features, use_residual
        self.activation = _SHORT_ACTIVATIONS.get(activation, activation)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"Dense activation_function {activation!r} is not supported; bertkit runs "
                              f"{', '.join(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = ACTIVATIONS[self.activation]()
        self.residual = nn.Linear(in_features, out_features, bias=False) \
            if use_residual and in_features != out_features else None

    def forward(self, x: Tensor) -> Tensor:
        """(batch, in_features) -> (batch, out_features)."""
        out = self.act(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out

    @classmethod
    def load(cls, path: Path) -> Dense:
        f = path / "config.json"
        cfg = _read_json(f)
        for key in ("module_input_name", "module_output_name"):  # a Dense on token states is another model
            if cfg.get(key) not in (None, "sentence_embedding"):
                raise ConfigError(f"{f}: {key} {cfg[key]!r} is not supported (only 'sentence_embedding')")
        in_f, out_f = _field(cfg, "in_features", int, f), _field(cfg, "out_features", int, f)
        if not in_f or not out_f:
            raise ConfigError(f"{f}: in_features and out_features must be positive integers")
        try:
            dense = cls(in_f, out_f, _field(cfg, "bias", bool, f, True),
                        _field(cfg, "activation_function", str, f, "torch.nn.modules.activation.Tanh"),
                        _field(cfg, "use_residual", bool, f, False))
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") from None
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: Dense module without weights; looked for {' or '.join(WEIGHT_FILES)}")
        state = read_state_dict(weights)  # .bin with weights_only=True
        want = dense.state_dict()
        missing = [k for k in want if k not in state]
        if missing:
            raise CheckpointError(f"{weights}: missing {', '.join(missing)} (has {', '.join(sorted(state)) or 'none'})")
        for k, t in want.items():
            if tuple(state[k].shape) != tuple(t.shape):
                raise CheckpointError(f"{weights}: {k} has shape {tuple(state[k].shape)}, config.json says "
                                      f"{tuple(t.shape)}")
        dense.load_state_dict({k: state[k].float() for k in want})
        return dense

    def save(self, path: Path) -> None:
        cfg: dict[str, Any] = {"in_features": self.in_features, "out_features": self.out_features,
                               "bias": self.linear.bias is not None, "activation_function": self.activation,
                               "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
        if self.use_residual:  # left out when off, as sentence-transformers does (older releases lack the key)
            cfg["use_residual"] = True
        _write_json(path / "config.json", cfg)
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors({k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}, path)


@dataclass
class Normalize:
    """L2-normalize the sentence embedding."""

    NAME: ClassVar[str] = "Normalize"
    IN_ROOT: ClassVar[bool] = False

    @classmethod
    def load(cls, path: Path) -> Normalize:
        f = path / "config.json"  # absent in sentence-transformers < 5: the folder may not even exist
        cfg = _read_json(f, required=False)
        for key in ("module_input_name", "module_output_name"):
            if cfg.get(key) not in (None, "sentence_embedding"):
                raise ConfigError(f"{f}: {key} {cfg[key]!r} is not supported (only 'sentence_embedding')")
        return cls()

    def save(self, path: Path) -> None:
        _write_json(path / "config.json", {"module_input_name": "sentence_embedding",
                                           "module_output_name": "sentence_embedding"})


MODULE_TYPES: dict[str, Any] = {m.NAME: m for m in (Transformer, Pooling, Dense, Normalize)}


# ---- the whole configuration -------------------------------------------------------------------------
@dataclass
class SentenceConfig:
    """How a model turns token states into a sentence embedding, and its prompts.

    ``explicit``: read from a modules.json or set on purpose (training); only then does ``save`` write the
    sentence-transformers files (bertkit's defaults for a plain HF directory are not written out).
    """

    pooling: Pooling = field(default_factory=Pooling)
    dense: list[Dense] = field(default_factory=list)
    normalize: bool = True
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    explicit: bool = False

    def __post_init__(self) -> None:
        self.prompts = {"query": "", "document": "", **self.prompts}  # sentence-transformers' always-there pair

    @classmethod
    def defaults(cls, hidden_size: int) -> SentenceConfig:
        """bertkit's settings for a directory without modules.json: mean pooling, normalized, no prompts."""
        return cls(Pooling(dim=hidden_size))

    @property
    def modes(self) -> tuple[str, ...]:
        return self.pooling.modes

    @property
    def similarity(self) -> str:
        """The similarity the model was trained for (sentence-transformers' default: cosine)."""
        return self.similarity_fn_name or "cosine"

    # ---- reading ----
    @classmethod
    def read(cls, directory: str | Path, hidden_size: int) -> SentenceConfig:
        """The settings of ``directory`` for a model whose token states are ``hidden_size`` wide."""
        d = Path(directory)
        root = Transformer.load(d)  # a plain HF directory may carry sentence_bert_config.json alone
        if not (d / MODULES_FILE).is_file():
            cfg = cls.defaults(hidden_size)
            cfg.max_seq_length, cfg.do_lower_case = root.max_seq_length, root.do_lower_case
            return cfg
        modules = _read_modules(d)
        cfg = cls._assemble(modules, d / MODULES_FILE)
        cfg._read_model_file(d / MODEL_FILE)
        cfg.check(hidden_size, d)
        return cfg

    @classmethod
    def _assemble(cls, modules: list[Any], where: Path) -> SentenceConfig:
        """Transformer -> Pooling -> Dense* -> Normalize? into the dataclass; any other order is refused."""
        names = [type(m).NAME for m in modules]
        order = "Transformer, Pooling, any number of Dense, then optionally Normalize"
        if names[:2] != ["Transformer", "Pooling"]:
            raise ConfigError(f"{where}: modules {' -> '.join(names)}; bertkit runs {order}")
        rest = names[2:]
        n_dense = len(rest) - (1 if rest and rest[-1] == "Normalize" else 0)
        if any(n != "Dense" for n in rest[:n_dense]):
            raise ConfigError(f"{where}: modules {' -> '.join(names)}; bertkit runs {order}")
        root, pooling = modules[0], modules[1]
        return cls(pooling, list(modules[2:2 + n_dense]), n_dense < len(rest), root.max_seq_length,
                   root.do_lower_case, explicit=True)

    def _read_model_file(self, f: Path) -> None:
        cfg = _read_json(f, required=False)
        prompts = cfg.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in prompts.items()):
            raise ConfigError(f"{f}: field 'prompts' must map names to prompt texts, got {prompts!r}")
        self.prompts.update(prompts)
        self.default_prompt_name = _field(cfg, "default_prompt_name", str, f)
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ConfigError(f"{f}: default_prompt_name {self.default_prompt_name!r} is not one of its prompts "
                              f"({', '.join(map(repr, self.prompts))})")
        self.similarity_fn_name = _field(cfg, "similarity_fn_name", str, f)
        if self.similarity_fn_name is not None and self.similarity_fn_name not in SIMILARITIES:
            raise ConfigError(f"{f}: similarity_fn_name {self.similarity_fn_name!r} is not one of "
                              f"{', '.join(SIMILARITIES)}")

    def check(self, hidden_size: int, where: str | Path = "") -> None:
        """Refuse sizes that do not chain: pooling over ``hidden_size`` states, each Dense on the one before."""
        at = f"{where}: " if where else ""
        if self.pooling.dim and self.pooling.dim != hidden_size:
            raise ConfigError(f"{at}the Pooling module expects {self.pooling.dim}-dimensional token states; the "
                              f"model's hidden size is {hidden_size}")
        self.pooling.dim = hidden_size
        self._check_dense(self.pooling.out_dim, at)

    def _check_dense(self, dim: int, at: str = "") -> None:
        for i, layer in enumerate(self.dense):
            if layer.in_features != dim:
                what = "the pooled vector" if i == 0 else "the Dense module before it"
                raise ConfigError(f"{at}Dense module {i + 1} takes {layer.in_features} inputs but {what} has {dim}")
            dim = layer.out_features

    # ---- prompts ----
    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The text to prepend: ``prompt`` as given, else the named prompt, else the default prompt, else ""."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("give a prompt or a prompt_name, not both")
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ConfigError(f"unknown prompt_name {prompt_name!r}; this model's prompts: "
                                  f"{', '.join(f'{k!r}: {v!r}' for k, v in self.prompts.items())}")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def role_prompt(self, role: str, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prompt of one side of retrieval ("query" or "document"): as given, else the model's own for
        that role (sentence-transformers' encode_query / encode_document: "query"; "document", "passage"
        or "corpus"), which may be ""."""
        if prompt is not None or prompt_name is not None:
            return self.resolve_prompt(prompt_name, prompt)
        names = [n for n in ROLE_PROMPTS[role] if self.prompts.get(n)]
        return self.prompts[names[0]] if names else ""

    def prepare(self, texts: Sequence[str], prompt: str = "") -> list[str]:
        """The texts as the tokenizer gets them: prompt prepended, lowercased if the model says so (a non-string
        passes through untouched, for the tokenizer to name)."""
        out = [prompt + t if isinstance(t, str) else t for t in texts] if prompt else list(texts)
        return [t.lower() if isinstance(t, str) else t for t in out] if self.do_lower_case else out

    def prompt_length(self, prompt_ids: Sequence[int], special_ids: Sequence[int]) -> int:
        """Tokens pooling leaves out for a prompt tokenized alone as ``prompt_ids`` ([CLS] prompt [SEP]): all
        but a trailing special token, so [CLS] goes too (sentence-transformers' prompt_length); 0 when the
        model pools over the prompt."""
        if self.pooling.include_prompt:
            return 0
        return len(prompt_ids) - (1 if prompt_ids and prompt_ids[-1] in special_ids else 0)

    # ---- running ----
    def dim(self, pooling: str | Sequence[str] | None = None) -> int:
        """The embedding size, with ``pooling`` modes instead of the model's own if given."""
        modes = self.modes if pooling is None else pooling_modes(pooling)
        n = len(modes) * self.pooling.dim
        if self.dense:
            if len(modes) != len(self.modes):
                raise ValueError(f"pooling {'+'.join(modes)} gives {n}-dimensional vectors but the model's Dense "
                                 f"module takes {self.dense[0].in_features}")
            return self.dense[-1].out_features
        return n

    def embed(self, h: Tensor, packing: Packing, prompt_length: int = 0,
              pooling: str | Sequence[str] | None = None, normalize: bool | None = None) -> Tensor:
        """Token states h (total_tokens, hidden) -> sentence embeddings (batch, dim): pooling, each Dense,
        then L2 normalization; ``pooling`` / ``normalize`` override the model's own when given."""
        x = pool(h, packing, self.modes if pooling is None else pooling, prompt_length)
        for layer in self.dense:
            x = layer.to(x.device)(x)
        if self.normalize if normalize is None else normalize:
            x = F.normalize(x, p=2, dim=-1)
        return x

    # ---- writing ----
    def with_pooling(self, pooling: str | Sequence[str]) -> SentenceConfig:
        """A copy pooling with other modes (the Dense modules, shared, must still fit)."""
        out = dataclasses.replace(self, pooling=dataclasses.replace(self.pooling, modes=pooling_modes(pooling)))
        out._check_dense(out.pooling.out_dim)
        return out

    def modules(self, max_seq_length: int | None) -> list[Any]:
        """The pipeline as sentence-transformers modules, in modules.json order."""
        return [Transformer(max_seq_length, self.do_lower_case), self.pooling, *self.dense,
                *([Normalize()] if self.normalize else [])]

    def save(self, directory: str | Path, max_seq_length: int | None = None) -> None:
        """Write modules.json, every module's folder and config_sentence_transformers.json (when ``explicit``;
        else only a sentence_bert_config.json the source directory had). Each file is written atomically."""
        d = Path(directory)
        max_seq_length = max_seq_length or self.max_seq_length
        if not self.explicit:
            if self.max_seq_length is not None:
                Transformer(max_seq_length, self.do_lower_case).save(d)
            return
        entries = []
        for idx, module in enumerate(self.modules(max_seq_length)):
            path = "" if module.IN_ROOT else f"{idx}_{module.NAME}"
            module.save(d / path)
            entries.append({"idx": idx, "name": str(idx), "path": path,
                            "type": f"sentence_transformers.models.{module.NAME}"})
        _write_json(d / MODEL_FILE, {"model_type": "SentenceTransformer", "prompts": self.prompts,
                                     "default_prompt_name": self.default_prompt_name,
                                     "similarity_fn_name": self.similarity})
        _write_json(d / MODULES_FILE, entries)  # last: a directory is a sentence-transformers one once it names them


def _read_modules(d: Path) -> list[Any]:
    """modules.json's modules, loaded, in order."""
    f = d / MODULES_FILE
    entries = _read_json(f, kind=list)
    if not entries:
        raise ConfigError(f"{f}: expected a non-empty list of modules")
    out = []
    for i, entry in enumerate(sorted(entries, key=lambda e: e.get("idx", 0) if isinstance(e, dict) else 0)):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
                or not isinstance(entry.get("path", ""), str):
            raise ConfigError(f"{f}: entry {i} must be an object with a string 'type' and 'path', got {entry!r}")
        kind, path = entry["type"], entry.get("path", "")
        name = kind.rsplit(".", 1)[-1]
        if not kind.startswith(TYPE_PREFIX) or name not in MODULE_TYPES:
            raise ConfigError(f"{f}: module {entry.get('name', i)!r} of type {kind!r} at path {path!r} is not "
                              f"supported; bertkit reads {', '.join(MODULE_TYPES)}")
        out.append(MODULE_TYPES[name].load(d / path))
    return out


def has_sentence_files(directory: str | Path) -> bool:
    """Whether ``directory`` is a sentence-transformers directory (it has a modules.json)."""
    return (Path(directory) / MODULES_FILE).is_file()
