"""What a served model can do: load a model directory once and say which endpoints it serves.

embeddings  always: the encoder with the model's own pooling, Dense, Normalize and prompts (a task model's
            own encoder: mean pooling)
classify    sequence task models: classification, pair-classification, multilabel, regression
ner         token-classification task models
qa          extractive question-answering models (``QAModel``)
fill-mask   checkpoints with a trained MLM head (the family's XxxForMaskedLM layout)

Weights are read once: a task model's embeddings run its own encoder module, and the MLM head of a
masked-LM checkpoint sits on the encoder that ``bertkit.loader.load`` loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.chunking import check_long_inputs, check_window_pooling, tokens_read
from bertkit.encoder import Encoder
from bertkit.errors import BertkitError
from bertkit.explain import explain
from bertkit.fill_mask import FillMask
from bertkit.hub import DEFAULT_MODEL
from bertkit.inference.engine import EngineOptions
from bertkit.loader import encoder_of, inspect, load, load_task_model
from bertkit.model.mlm import MaskedLM, has_mlm_head
from bertkit.qa_model import QAModel
from bertkit.task_model import TaskModel

log = logging.getLogger("bertkit")

CAPABILITIES = ("embeddings", "classify", "ner", "qa", "fill-mask")
SEQUENCE_TASKS = ("classification", "pair-classification", "multilabel", "regression")


@dataclass
class Service:
    name: str
    encoder: Encoder
    task_model: TaskModel | QAModel | None = None
    fill_mask: FillMask | None = None
    pooling: str | None = None  # None: the model's own
    explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    long_inputs: str = "truncate"  # or "chunk": texts past max_length are read in windows (bertkit.data.chunking)
    stride: int | None = None  # chunk: the windows' overlap in tokens (None: a quarter of the window)

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    @property
    def embedding_dim(self) -> int:
        """The size of the vectors /v1/embeddings returns (the model's Dense modules may change it)."""
        return self.encoder.sentence.dim(self.pooling)

    @property
    def capabilities(self) -> list[str]:
        return [c for c in CAPABILITIES if self.why_not(c) is None]

    def why_not(self, capability: str) -> str | None:
        """None if the model serves ``capability``, else the reason it does not."""
        task = self.task_model.task if self.task_model is not None else None
        if capability == "classify" and task not in SEQUENCE_TASKS:
            return (f"model {self.name} is a token-classification (ner) model: use /v1/ner" if task == "ner" else
                    f"model {self.name} has no sequence-classification head; serve a model fine-tuned with "
                    f"`bertkit finetune`")
        if capability == "ner" and task != "ner":
            return f"model {self.name} has no token-classification (ner) head"
        if capability == "qa" and task != "qa":
            return f"model {self.name} has no question-answering head; fine-tune one with `bertkit finetune --task qa`"
        if capability == "fill-mask" and self.fill_mask is None:
            return f"model {self.name} has no trained MLM head (it is not a BertForMaskedLM checkpoint)"
        return None

    # ---- token counts (untruncated, with [CLS]/[SEP]) -------------------------------------
    def count_tokens(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[int]:
        tok = self.encoder.tokenizer
        n = [len(x) + 2 for x in tok.encode_plain(list(texts))]
        if pairs is not None:
            n = [a + len(b) + 1 for a, b in zip(n, tok.encode_plain(list(pairs)), strict=True)]
        return n

    def tokens_read(self, n: int) -> int:
        """Tokens the model runs on for an input of ``n`` tokens: max_length at most when truncating, every
        window's when chunking (a pair's repeated first text is not counted again: an estimate for pairs)."""
        if self.long_inputs == "truncate":
            return min(n, self.max_length)
        return tokens_read(n, self.max_length, self.encoder.tokenizer.num_special_tokens(), self.stride)

    def count_word_tokens(self, words: Sequence[Sequence[str]]) -> list[int]:
        """Word lists (NER): BERT's pre-tokenizer splits on whitespace anyway, so joined words count the same."""
        return self.count_tokens([" ".join(w) for w in words])

    # ---- inference (called by the batchers' worker threads with whole merged lists) -------
    def embed(self, texts: list[str], normalize: bool | None, prompt: str | None = None) -> np.ndarray:
        """(len(texts), embedding_dim) float32; None: the model's own normalization / default prompt."""
        return self.encoder.embed(texts, pooling=self.pooling, normalize=normalize, progress=False, prompt=prompt,
                                  long_inputs=self.long_inputs, stride=self.stride)

    def classify(self, items: list[tuple[str, str | None]], paired: bool) -> list[dict[str, Any]]:
        assert self.task_model is not None
        texts = [a for a, _ in items]
        pairs = [str(b) for _, b in items] if paired else None
        return self.task_model.predict(texts, pairs, long_inputs=self.long_inputs, stride=self.stride)

    def explain(self, texts: list[str], pairs: list[str] | None, target: str | None, steps: int
                ) -> list[dict[str, Any]]:
        """Token attributions (``bertkit.explain``), one request at a time, outside the batcher."""
        assert self.task_model is not None
        with self.explain_lock:
            return [e.to_dict() for e in explain(self.task_model, texts, pairs, target, steps)]

    def ner(self, words: list[list[str]] | list[str], aggregation_strategy: str | None = None) -> list[dict[str, Any]]:
        """Word lists -> word tags (long inputs as the server reads them); raw texts with an aggregation strategy ->
        entities with character offsets."""
        assert self.task_model is not None
        if aggregation_strategy is not None:
            return self.task_model.predict(words, aggregation_strategy=aggregation_strategy,
                                           long_inputs=self.long_inputs, stride=self.stride)
        return self.task_model.predict(words, long_inputs=self.long_inputs, stride=self.stride)

    def qa(self, items: list[tuple[str, str]], top_k: int = 1,
           null_threshold: float | None = None) -> list[Any]:
        assert isinstance(self.task_model, QAModel)
        return self.task_model.predict([q for q, _ in items], [c for _, c in items], top_k=top_k,
                                       null_threshold=null_threshold)

    def fill(self, texts: list[str], top_k: int) -> list[list[list[dict[str, Any]]]]:
        assert self.fill_mask is not None
        return self.fill_mask(texts, top_k=top_k)

    def describe(self) -> str:
        kind = f"{self.task_model.task} task model" if self.task_model is not None else "encoder"
        chunk = f", long inputs in windows (stride {self.stride})" if self.long_inputs == "chunk" else ""
        return (f"{self.name} ({kind}, hidden {self.hidden_size}, max_length {self.max_length}{chunk}); serves "
                f"{', '.join(self.capabilities)}")


def is_task_dir(directory: Path) -> bool:
    """A fine-tuned model of any family: ours (bertkit_task.json) or transformers' XxxForSequenceClassification /
    XxxForTokenClassification."""
    try:
        return inspect(directory).is_task_model
    except BertkitError:
        return False


def load_service(model: str | None = None, options: EngineOptions | None = None, *, long_inputs: str | None = None,
                 stride: int | None = None, window_pooling: str | None = None) -> Service:
    """Load a built-in name, a local model directory of any family and format, or an ``org/name`` in the local
    Hugging Face cache (default all-MiniLM-L6-v2) for serving, through ``bertkit.loader``.

    long_inputs, stride, window_pooling: how every endpoint reads a text past max_length (None: what a task model
    was saved with, else truncate)."""
    options = options or EngineOptions()
    if long_inputs is not None:
        check_long_inputs(long_inputs)
    info = inspect(model)
    name = str(model or DEFAULT_MODEL)
    if info.is_task_model:
        tm = load_task_model(info.path, engine=options)
        if window_pooling is not None:
            tm.window_pooling = check_window_pooling(window_pooling)
        # The encoder module (and engine) the task head runs on: embeddings need no second copy of the weights.
        enc = encoder_of(tm, info)
        enc.name = name
        return Service(name, enc, task_model=tm, long_inputs=long_inputs or tm.long_inputs,
                       stride=tm.stride if stride is None and long_inputs is None else stride)
    enc = load(info.path, engine=options)
    enc.name = name
    fm = None
    spec = info.family.mlm
    if has_mlm_head(enc.head_state, spec):  # the MLM head sits on the encoder just loaded (torch, even with onnx)
        fm = FillMask(MaskedLM.from_encoder(enc.model, enc.head_state, str(info.path)), enc.tokenizer,
                      enc.max_length, head_trained=True, name=name, engine=enc.engine)
    return Service(name, enc, fill_mask=fm, long_inputs=long_inputs or "truncate", stride=stride)
