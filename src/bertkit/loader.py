"""The one loader: whatever a name or directory holds, of any family, as the object the caller asks for.

``inspect(name)``          what the directory is (``model.directory.ModelDir``: family, format, role, task), from
                           its small files only; ``bertkit info`` prints it
``load(name)``             an ``Encoder`` (sentence embeddings, token states) from a transformers or
                           sentence-transformers directory, a task model (its encoder), an MLM, a compressed or
                           low-rank checkpoint, or an ONNX export
``load_task_model(name)``  a ``TaskModel`` from a bertkit or transformers task directory (any family), or a
                           compressed / low-rank one; a ``QAModel`` for a question-answering one
``load_fill_mask(name)``   a ``FillMask`` (an MLM head in the family's layout, or a fresh one, with a warning)

Names resolve through ``hub.resolve_model_dir`` (built-in names, local directories, the local Hugging Face cache);
nothing is downloaded. The formats are decided once, in ``inspect``; each has one loader below.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from bertkit.encoder import Encoder, default_max_length, engine_options, pick_device
from bertkit.fill_mask import FillMask
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.model.attention import attn_implementation_of
from bertkit.model.directory import ModelDir, inspect_model_dir
from bertkit.model.sentence import SentenceConfig
from bertkit.qa_model import QAModel
from bertkit.task_model import TaskModel

NameOrPath = str | os.PathLike[str] | None


def inspect(name_or_path: NameOrPath = None) -> ModelDir:
    return inspect_model_dir(name_or_path)


def _compressed(info: ModelDir, device: Any, engine: EngineOptions | None, path: str) -> TaskModel | Encoder:
    from bertkit.compress.quantize import load_compressed  # the compression package is only needed here

    return load_compressed(info.path, device=device, engine=engine, path=path)


def _lowrank(info: ModelDir, device: Any, path: str) -> TaskModel | Encoder:
    from bertkit.compress.lowrank import load_lowrank
    from bertkit.data.tokenizer import Tokenizer

    model = load_lowrank(info.path, device=device, path=path)
    if isinstance(model, TaskModel):
        return model
    tokenizer = Tokenizer.from_dir(info.weights_dir)
    engine = Engine()
    engine.prepare(model, tokenizer, pick_device(device), str(info.path))
    enc = Encoder(model, tokenizer, default_max_length(info.weights_dir, model.config.max_tokens),
                  name=str(info.path), source_dir=info.path, engine=engine)
    enc.model_dir = info
    enc.sentence = SentenceConfig.read(info.path, model.config.hidden_size)
    return enc


def encoder_of(tm: TaskModel, info: ModelDir) -> Encoder:
    """The encoder a task model runs on, as an Encoder sharing its weights and engine (no second copy)."""
    enc = Encoder(tm.head.encoder, tm.tokenizer, tm.max_length, name=str(info.path), source_dir=info.path,
                  engine=tm.engine)
    enc.onnx = tm.onnx  # an exported task graph also outputs last_hidden_state
    enc.model_dir = info
    enc.sentence = SentenceConfig.read(info.path, tm.head.encoder.config.hidden_size)
    return enc


def load(name_or_path: NameOrPath = None, *, attn_implementation: str | None = None,
         device: str | torch.device | None = None, engine: EngineOptions | None = None, dtype: str | None = None,
         int8: bool | None = None, backend: str | None = None, path: str | None = None) -> Encoder:
    """An encoder: ``load()`` or ``load("all-MiniLM-L6-v2")`` for the built-in default, a local directory of any
    family and format, or an ``org/name`` in the local Hugging Face cache. engine / dtype / int8 / backend: how
    inference runs (``EngineOptions``; the shortcuts override its fields). attn_implementation: "unpadded" (the
    default), "sdpa" or "reference" (``path``: its deprecated name)."""
    path = attn_implementation_of(attn_implementation, path)
    info = inspect_model_dir(name_or_path)
    options = engine_options(engine, dtype=dtype, int8=int8, backend=backend)
    if info.format == "compressed":
        model = _compressed(info, device, options, path)
    elif info.format == "low-rank":
        model = _lowrank(info, device, path)
    else:
        enc = Encoder.from_pretrained(info.path, attn_implementation=path, device=device, engine=options)
        enc.name = str(name_or_path) if name_or_path is not None else enc.name
        return enc
    if isinstance(model, TaskModel):
        return encoder_of(model, info)
    model.model_dir = info
    return model


def load_task_model(name_or_path: str | os.PathLike[str], device: str | torch.device | None = None,
                    engine: EngineOptions | None = None, *, attn_implementation: str | None = None,
                    dtype: str | None = None, int8: bool | None = None, backend: str | None = None,
                    path: str | None = None) -> TaskModel | QAModel:
    """A fine-tuned model of any family: bertkit's, transformers' ``XxxFor{Sequence,Token}Classification``, or a
    compressed / low-rank checkpoint of one; ``XxxForQuestionAnswering`` gives a ``QAModel``. attn_implementation:
    as ``load``."""
    path = attn_implementation_of(attn_implementation, path)
    info = inspect_model_dir(name_or_path)
    options = engine_options(engine, dtype=dtype, int8=int8, backend=backend)
    if info.format in ("compressed", "low-rank"):
        model = _compressed(info, device, options, path) if info.format == "compressed" else \
            _lowrank(info, device, path)
        if not isinstance(model, TaskModel):
            from bertkit.errors import CheckpointError

            raise CheckpointError(f"{info.path}: a {info.format} encoder, not a task model (no bertkit_task.json)")
        return model
    if info.task == "qa" or (info.task is None and info.role == "qa"):
        return QAModel.from_pretrained(info, device=device, attn_implementation=path, engine=options)
    return TaskModel.from_pretrained(info, device=device, attn_implementation=path, engine=options)


def load_fill_mask(name_or_path: NameOrPath = None, device: str | torch.device | None = None,
                   engine: EngineOptions | None = None, dtype: str | None = None,
                   int8: bool | None = None) -> FillMask:
    return FillMask.from_pretrained(name_or_path, device=device, engine=engine, dtype=dtype, int8=int8)
