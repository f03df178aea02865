"""``QAModel``: extractive question answering - an encoder with a span head, its tokenizer and the decoding
settings; ``predict(questions, contexts)``, ``evaluate(data)``, ``save_pretrained``.

A saved QA model is a Hugging Face directory in its family's ``XxxForQuestionAnswering`` layout (``qa_outputs``, or
ModernBERT's ``head`` + ``classifier``) that transformers' ``AutoModelForQuestionAnswering`` loads with the same
logits, plus ``bertkit_task.json`` (task "qa", max_length, doc_stride, max_answer_length, null_threshold).
``bertkit.load_task_model`` returns one for such a directory, or for a QA model written by transformers.

Inputs run padding-free: every window of every question is packed into token-budget batches (``Engine.plan``),
then decoded per question (``inference.qa_decode``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from bertkit import metrics as M
from bertkit.data.features import PackedBatch, make_batch
from bertkit.data.qa_features import QAFeatures, context_room, qa_features
from bertkit.data.squad import QAData, QAExample, qa_data
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import check_vocabulary, engine_options
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.inference.qa_decode import Window, decode
from bertkit.model.attention import attn_implementation_of
from bertkit.model.directory import TASK_FILE, ModelDir, inspect_model_dir, load_encoder
from bertkit.model.heads import QuestionAnsweringHead, strip_task_keys
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import pick_device, tune_allocator

# run_qa's and the question-answering pipeline's defaults
MAX_LENGTH, DOC_STRIDE, MAX_ANSWER_LENGTH = 384, 128, 15


class QAModel:
    task = "qa"

    def __init__(self, model: QuestionAnsweringHead, tokenizer: Tokenizer, max_length: int = MAX_LENGTH,
                 doc_stride: int = DOC_STRIDE, max_answer_length: int = MAX_ANSWER_LENGTH,
                 null_threshold: float | None = None, directory: Path | None = None,
                 engine: Engine | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.doc_stride = doc_stride
        # how the server and commands see its long inputs: a context is always read in windows overlapping by
        # doc_stride tokens (the other task models' long_inputs / stride / window_pooling)
        self.long_inputs, self.stride, self.window_pooling = "chunk", doc_stride, "max"
        self.max_answer_length = max_answer_length
        self.null_threshold = null_threshold  # None: always answer; a float: v2-style no-answer (see qa_decode)
        self.directory = directory
        self.engine = engine or Engine()

    @property
    def labels(self) -> list[str]:
        return []

    @property
    def head(self) -> QuestionAnsweringHead:
        """``model``'s name in ``TaskModel`` (the encoder plus its head), for code that serves either."""
        return self.model

    onnx = None  # QA runs on torch; ``bertkit.loader.encoder_of`` reads this as TaskModel's

    # ---- load / save ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str] | ModelDir, device: str | torch.device | None = None,
                        attn_implementation: str | None = None, engine: EngineOptions | None = None,
                        dtype: str | None = None, int8: bool | None = None) -> QAModel:
        path = attn_implementation_of(attn_implementation, None)
        options = engine_options(engine, dtype=dtype, int8=int8)
        if options.backend != "torch":
            raise ValueError(f"question answering runs on the torch backend, not {options.backend!r}")
        info = directory if isinstance(directory, ModelDir) else inspect_model_dir(directory)
        if pick_device(device).type == "cpu":
            tune_allocator()
        encoder, heads, _ = load_encoder(info, path=path, who="QAModel.from_pretrained")
        strip_task_keys(encoder.config)
        head = QuestionAnsweringHead(encoder)
        head.load_head_state(heads, source=str(info.path))
        head.to(pick_device(device)).eval()
        tokenizer = Tokenizer.from_dir(info.weights_dir)
        check_vocabulary(tokenizer, encoder, info.weights_dir)
        eng = Engine(options)
        eng.prepare(head.encoder, tokenizer, pick_device(device), str(info.path))
        meta = json.loads((info.path / TASK_FILE).read_text(encoding="utf-8")) \
            if (info.path / TASK_FILE).is_file() else {}
        max_length = int(meta.get("max_length") or min(MAX_LENGTH, encoder.config.max_tokens))
        return cls(head, tokenizer, max_length, int(meta.get("doc_stride", min(DOC_STRIDE, max_length // 2))),
                   int(meta.get("max_answer_length", MAX_ANSWER_LENGTH)), meta.get("null_threshold"), info.path, eng)

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: bool = True) -> Path:
        d = Path(directory)
        self.model.save_pretrained(d)
        if tokenizer:
            self.tokenizer.save(d)
        atomic_write_text(d / TASK_FILE, json.dumps({
            "task": "qa", "max_length": self.max_length, "doc_stride": self.doc_stride,
            "max_answer_length": self.max_answer_length, "null_threshold": self.null_threshold}, indent=2) + "\n")
        return d

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- windows and logits ---------------------------------------------------------------
    def featurize(self, data: QAData | Sequence[QAExample], with_labels: bool = True) -> QAFeatures:
        examples = data.examples if isinstance(data, QAData) else list(data)
        return qa_features(examples, self.tokenizer, self.max_length, self.doc_stride, with_labels)

    def loss(self, head: torch.nn.Module, batch: PackedBatch) -> Tensor:
        """Mean loss of one batch (the training engine's ``loss_fn``; ``head`` may be DDP around the head)."""
        own = head.module if isinstance(head, DistributedDataParallel) else head
        logits = head(batch.input_ids, batch.packing, batch.token_type_ids)
        return own.loss(logits, batch.labels.long(), batch.packing)

    def logits(self, feats: QAFeatures, batch_size: int | None = None) -> list[np.ndarray]:
        """Per window (n_tokens, 2) float32 start/end logits, in window order."""
        self.model.eval()
        out: list[np.ndarray] = [np.zeros((0, 2), np.float32)] * len(feats)
        with self.engine.running(self.device):
            for idx in self.engine.plan(feats.features.lengths, batch_size):
                b = make_batch(feats.features, idx).to(self.device)
                arr = self.model(b.input_ids, b.packing, b.token_type_ids).float().cpu().numpy()
                cu = b.packing.cu_seqlens.tolist()
                for j, i in enumerate(b.indices):
                    out[i] = arr[cu[j]:cu[j + 1]]
        return out

    def decode(self, examples: Sequence[QAExample], feats: QAFeatures, logits: list[np.ndarray], top_k: int = 1,
               null_threshold: float | None = None) -> list[list[dict[str, Any]]]:
        """The ``top_k`` answers of each example (see ``inference.qa_decode.decode``)."""
        windows: list[list[Window]] = [[] for _ in examples]
        for w, i in enumerate(feats.example.tolist()):
            windows[i].append(Window(logits[w], int(feats.context_start[w]), feats.offsets[w], feats.words[w]))
        return [decode(ws, ex.context, top_k, self.max_answer_length, null_threshold)
                for ws, ex in zip(windows, examples, strict=True)]

    def token_counts(self, questions: Sequence[str], contexts: Sequence[str]) -> list[int]:
        """Untruncated tokens of each pair (a server's budget); a ValueError naming the sizes for a question that
        leaves no room for its context (``data.qa_features.context_room``)."""
        tok = self.tokenizer
        n_special = tok.num_special_tokens(pair=True)
        out = []
        for i, (q, c) in enumerate(zip(tok.encode_plain(list(questions)), tok.encode_plain(list(contexts)),
                                       strict=True)):
            context_room(f"question[{i}]", len(q), len(c), n_special, self.max_length, self.doc_stride)
            out.append(len(q) + len(c) + n_special)
        return out

    # ---- public API -----------------------------------------------------------------------
    def predict(self, questions: Sequence[str], contexts: Sequence[str], top_k: int = 1,
                null_threshold: float | None = None, batch_size: int | None = None) -> list[Any]:
        """Per question {"answer", "score", "start", "end"} (characters of its context, end exclusive), or with
        ``top_k`` > 1 a list of them, best first. null_threshold: the model's when None (see qa_decode)."""
        if isinstance(questions, str) or isinstance(contexts, str):
            raise TypeError("predict() takes lists of questions and contexts; wrap a single one in a list")
        data = qa_data(list(questions), list(contexts))
        if not data.examples:
            return []
        feats = self.featurize(data, with_labels=False)
        threshold = self.null_threshold if null_threshold is None else null_threshold
        answers = self.decode(data.examples, feats, self.logits(feats, batch_size), top_k, threshold)
        return [a[0] if top_k == 1 else a for a in answers]

    def evaluate(self, data: QAData, batch_size: int | None = None,
                 null_threshold: float | None = None) -> dict[str, float]:
        """SQuAD exact match and F1 (percent). v2-style data (questions without answers) is decoded with a
        no-answer option at ``null_threshold`` (the model's, else 0)."""
        threshold = self.null_threshold if null_threshold is None else null_threshold
        if threshold is None and data.has_impossible:
            threshold = 0.0
        feats = self.featurize(data, with_labels=False)
        best = self.decode(data.examples, feats, self.logits(feats, batch_size), 1, threshold)
        preds = [a[0]["answer"] if a else "" for a in best]
        return {**M.squad_scores([e.answers for e in data.examples], preds), "n_examples": float(len(preds))}
