"""What a model directory holds, decided once, from its small files (no weights are read).

``inspect_model_dir(name_or_path)`` resolves a name (``hub.resolve_model_dir``: built-in, local, or the local Hugging
Face cache) and returns a ``ModelDir``:

``format``  "hf"                     a transformers directory (config.json + weights) of any family
            "sentence-transformers"  the same plus modules.json (its Transformer module may sit in a subfolder)
            "compressed"             bertkit's quantized / sparse checkpoint (config.json "quantization" section)
            "low-rank"               bertkit's SVD-factorized checkpoint (config.json "lowrank" section)
            "onnx"                   an ONNX export (model.onnx) without torch weights
``family``  bert, roberta, deberta-v2, modernbert, electra, distilbert, mpnet (from config.json's model_type)
``role``    "encoder", "sequence", "token", "qa", "mlm", "pretraining" (from ``architectures``), and ``task`` the
            bertkit task name when bertkit_task.json says so

``load_encoder(name_or_path)`` is the one place that turns a directory of float weights into our encoder (plus its
task-head tensors and the ``ModelDir``); the formats it cannot run as float weights are refused by name, so every
training command that starts from a model says what the directory is and what to do instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from bertkit.errors import CheckpointError, ConfigError
from bertkit.hub import resolve_model_dir
from bertkit.model.bert import BertModel
from bertkit.model.families import Family, family_for_model_type, role_of
from bertkit.model.weights import INDEX_FILES, WEIGHT_FILES, load_pretrained

TASK_FILE = "bertkit_task.json"
ONNX_FILE = "model.onnx"
LOWRANK_KEY = "lowrank"  # compress/lowrank.py writes it
QUANT_KEY = "quantization"
ST_TRANSFORMER = "sentence_transformers.models.Transformer"
FORMATS = ("hf", "sentence-transformers", "compressed", "low-rank", "onnx")


@dataclass
class ModelDir:
    path: Path  # the directory the name resolved to
    weights_dir: Path  # where config.json and the weights are (a sentence-transformers Transformer module's folder)
    format: str
    family: Family
    model_type: str
    role: str
    architecture: str | None
    task: str | None  # bertkit task name (bertkit_task.json), when a bertkit task model
    has_torch_weights: bool
    has_onnx: bool
    config: dict[str, Any]

    @property
    def is_task_model(self) -> bool:
        return self.task is not None or self.role in ("sequence", "token", "qa")

    def describe(self) -> str:
        what = {"sequence": "sequence classifier", "token": "token classifier",
                "qa": "question-answering model", "mlm": "masked LM",
                "pretraining": "ELECTRA discriminator with its head", "encoder": "encoder"}[self.role]
        onnx = ", + onnx" if self.has_onnx and self.format != "onnx" else ""
        return f"{self.family.name} {what} ({self.format}{onnx})"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _transformer_dir(d: Path) -> Path:
    """The folder of a sentence-transformers directory's Transformer module ("" is the directory itself)."""
    modules = _json(d / "modules.json")
    if not isinstance(modules, list):
        raise ConfigError(f"{d / 'modules.json'}: expected a list of modules")
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith(("models.Transformer", ".Transformer")):
            return d / str(m.get("path", ""))
    raise CheckpointError(f"{d / 'modules.json'}: no {ST_TRANSFORMER} module, so there is no encoder to load")


def inspect_model_dir(name_or_path: str | os.PathLike[str] | None = None) -> ModelDir:
    d = resolve_model_dir(name_or_path)
    weights_dir = _transformer_dir(d) if (d / "modules.json").is_file() else d
    if not (weights_dir / "config.json").is_file():
        raise CheckpointError(f"{weights_dir}: no config.json found (looked for {weights_dir / 'config.json'})")
    config = _json(weights_dir / "config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"{weights_dir / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type", "bert")
    family = family_for_model_type(model_type, weights_dir / "config.json")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    role = "encoder"
    if architecture:
        found = role_of(str(architecture))
        if found is not None:
            role = found[1]
    task = None
    if (d / TASK_FILE).is_file():
        meta = _json(d / TASK_FILE)
        task = meta.get("task") if isinstance(meta, dict) else None
    has_torch = any((weights_dir / f).is_file() for f in (*WEIGHT_FILES, *INDEX_FILES))
    has_onnx = (d / ONNX_FILE).is_file()
    if isinstance(config.get(QUANT_KEY), dict):
        fmt = "compressed"
    elif isinstance(config.get(LOWRANK_KEY), dict):
        fmt = "low-rank"
    elif not has_torch and has_onnx:
        fmt = "onnx"
    elif (d / "modules.json").is_file():
        fmt = "sentence-transformers"
    else:
        fmt = "hf"
    return ModelDir(d, weights_dir, fmt, family, str(model_type), role, architecture, task, has_torch, has_onnx,
                    config)


def load_encoder(name_or_path: str | os.PathLike[str] | ModelDir | None = None, path: str = "unpadded",
                 who: str = "this command") -> tuple[BertModel, dict[str, Tensor], ModelDir]:
    """(encoder, task-head tensors, ModelDir) of a directory with float torch weights, of any family and role.

    Compressed, low-rank and weights-less ONNX directories are refused with a message saying what they are:
    ``who`` (e.g. "fine-tuning") needs float weights; ``bertkit.load`` runs them.
    """
    info = name_or_path if isinstance(name_or_path, ModelDir) else inspect_model_dir(name_or_path)
    if info.format in ("compressed", "low-rank", "onnx"):
        raise CheckpointError(f"{info.path}: a {info.format} checkpoint ({info.describe()}); {who} needs float torch "
                              "weights (a transformers / sentence-transformers / bertkit directory). "
                              "bertkit.load / bertkit embed / serve run it as it is")
    model, heads = load_pretrained(info.weights_dir, path=path)
    return model, heads, info


def label_names(config: dict[str, Any], task: str) -> list[str]:
    """A task config's labels in id order: its ``id2label``, else transformers' defaults (``num_labels``, 2 when
    unsaid: transformers 5 writes neither for a default two-label head) as LABEL_0, LABEL_1, ...; [] for regression."""
    if task == "regression":
        return []
    id2label = config.get("id2label") or {}
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    n = config.get("num_labels", 2)
    return [f"LABEL_{i}" for i in range(n if isinstance(n, int) and n > 0 else 2)]


def infer_task(info: ModelDir) -> str:
    """The bertkit task of a transformers task directory of any family, from its architecture and problem_type."""
    problem = info.config.get("problem_type") or "single_label_classification"
    if info.role == "token":
        return "ner"
    if info.role == "qa":
        return "qa"
    if info.role == "sequence":
        return {"multi_label_classification": "multilabel", "regression": "regression"}.get(problem, "classification")
    raise CheckpointError(f"{info.path}: not a task model ({info.describe()}; config.json architectures="
                          f"{info.config.get('architectures')}, no {TASK_FILE}); fine-tune one with `bertkit finetune`")


def default_max_length(directory: Path, max_positions: int, tokenizer_dir: Path | None = None) -> int:
    """sentence-transformers' max_seq_length if the model has one, else the tokenizer's limit, never beyond the
    model's own (``max_positions``: ``EncoderConfig.max_tokens``, e.g. 512 for RoBERTa's 514 positions)."""
    for f, key in ((directory / "sentence_bert_config.json", "max_seq_length"),
                   ((tokenizer_dir or directory) / "tokenizer_config.json", "model_max_length")):
        if f.is_file():
            value = json.loads(f.read_text(encoding="utf-8")).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:
                return min(value, max_positions)
    return max_positions
