"""``TaskModel``: an encoder with a task head and its tokenizer; ``predict``, ``evaluate``, ``save_pretrained``.

A saved task model is a Hugging Face directory in its family's layout (``config.json`` with ``id2label``/
``label2id``/``problem_type``, ``model.safetensors`` with ``bert.*`` + ``classifier.*``, ``roberta.*`` +
``classifier.dense/out_proj``, ``model.*`` + ``head.*`` ..., tokenizer files) that the family's
``XxxForSequenceClassification`` / ``XxxForTokenClassification`` load with the same predictions, plus
``bertkit_task.json`` (task name, max_length, labels, a NER model's tag scheme, a multi-label model's tuned
thresholds (``bertkit.thresholds``), and how long inputs are read: ``long_inputs``, ``stride``, ``window_pooling``;
see ``bertkit.data.chunking``). ``load_task_model`` also reads directories written by transformers
itself, of any family; the task is then inferred from the config.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from bertkit.data.chunking import UNTRUNCATED, check_long_inputs, check_window_pooling, chunk_texts, reassemble
from bertkit.data.features import Features, PackedBatch, featurize, make_batch
from bertkit.data.tag_schemes import check_scheme, resolve_scheme, scheme_of_labels
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import check_vocabulary, engine_options
from bertkit.errors import CheckpointError
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.inference.token_aggregation import TokenAggregator, check_strategy
from bertkit.model.attention import attn_implementation_of, to_grid
from bertkit.model.directory import TASK_FILE, ModelDir, infer_task, inspect_model_dir, label_names, load_encoder
from bertkit.model.heads import PROBLEM_TYPE, SequenceClassifier, TokenClassifier, build_head, strip_task_keys
from bertkit.task_outputs import ner_metrics, ner_prediction, outputs_of, sequence_metrics, sequence_predictions
from bertkit.thresholds import FIXED, Choice, check_thresholds, decision_thresholds, tune_thresholds
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import pick_device, tune_allocator

if TYPE_CHECKING:
    from bertkit.inference.onnx import OnnxModel

log = logging.getLogger("bertkit")

# build_head, PROBLEM_TYPE (bertkit.model.heads), infer_task, label_names (bertkit.model.directory) lived here:
# importable from here for one release
__all__ = ["MAIN_METRIC", "MULTILABEL_THRESHOLD", "PROBLEM_TYPE", "TASK_FILE", "TaskModel", "build_head", "infer_task",
           "label_names", "load_task_model"]

# The metric that picks the best checkpoint, and whether larger is better.
MAIN_METRIC = {"classification": ("accuracy", True), "pair-classification": ("accuracy", True),
               "multilabel": ("micro_f1", True), "regression": ("pearson", True), "ner": ("f1", True),
               "qa": ("f1", True)}  # qa: SQuAD F1 of a QAModel (bertkit.qa_model)
MULTILABEL_THRESHOLD = FIXED  # the default cut; a model may carry per-label tuned ones


class TaskModel:
    def __init__(self, head: SequenceClassifier | TokenClassifier, tokenizer: Tokenizer, task: str,
                 labels: Sequence[str], max_length: int, directory: Path | None = None,
                 engine: Engine | None = None, scheme: str | None = None, *, long_inputs: str = "truncate",
                 stride: int | None = None, window_pooling: str = "mean") -> None:
        """long_inputs: "truncate" (read the first max_length tokens) or "chunk" (read every token, in windows
        overlapping by ``stride`` tokens, None: a quarter of the window; sequence tasks pool the windows' logits
        by ``window_pooling``, "mean" or "max"). ``predict``/``evaluate``/``featurize`` override them per call."""
        self.model = head  # the encoder with its classifier (an nn.Module); ``head`` is its old name
        self.tokenizer = tokenizer
        self.task = task
        self.labels = list(labels)  # id -> name; [] for regression
        self.label2id = {name: i for i, name in enumerate(self.labels)}
        self.max_length = max_length
        self.directory = directory
        self.engine = engine or Engine()
        self.onnx: OnnxModel | None = None  # set by from_pretrained(backend="onnx")
        # ner: the tag scheme (bertkit.data.tag_schemes); without one, the one the labels are written in
        self.scheme = check_scheme(scheme) if scheme else scheme_of_labels(self.labels) if task == "ner" else None
        self.thresholds: dict[str, float] | None = None  # multilabel: per-label thresholds tuned on dev, if any
        self.long_inputs = check_long_inputs(long_inputs)
        self.stride = stride
        self.window_pooling = check_window_pooling(window_pooling)

    # ---- load / save ----------------------------------------------------------------------
    @property
    def head(self) -> SequenceClassifier | TokenClassifier:
        """Deprecated name of ``model`` (the encoder plus its classifier, not the classifier alone)."""
        return self.model

    @head.setter
    def head(self, module: SequenceClassifier | TokenClassifier) -> None:
        self.model = module

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None,
                        attn_implementation: str | None = None, engine: EngineOptions | None = None,
                        dtype: str | None = None, int8: bool | None = None, backend: str | None = None,
                        path: str | None = None) -> TaskModel:
        """engine: how inference runs (see ``Encoder.from_pretrained``); dtype/int8/backend override it.
        attn_implementation: "unpadded" (default), "sdpa" or "reference" (``path``: its deprecated name)."""
        path = attn_implementation_of(attn_implementation, path)
        options = engine_options(engine, dtype=dtype, int8=int8, backend=backend)
        info = directory if isinstance(directory, ModelDir) else inspect_model_dir(directory)
        d = info.path
        if pick_device(device).type == "cpu":
            tune_allocator()
        encoder, heads, _ = load_encoder(info, path=path, who="TaskModel.from_pretrained (bertkit.load_task_model "
                                                               "runs it)")
        extra = encoder.config.extra
        meta = json.loads((d / TASK_FILE).read_text(encoding="utf-8")) if (d / TASK_FILE).is_file() else {}
        task = meta.get("task") or infer_task(info)
        labels = label_names(extra, task)
        strip_task_keys(encoder.config)
        head = build_head(encoder, task, max(len(labels), 1))
        head.load_head_state(heads, source=str(d))
        head.to(pick_device(device)).eval()
        tokenizer = Tokenizer.from_dir(info.weights_dir)
        check_vocabulary(tokenizer, encoder, info.weights_dir)
        eng = Engine(options)
        eng.prepare(head.encoder, tokenizer, pick_device(device), str(d))
        max_length = int(meta.get("max_length") or min(512, encoder.config.max_tokens))
        model = cls(head, tokenizer, task, labels, max_length, d, eng, scheme=meta.get("scheme"),
                    long_inputs=meta.get("long_inputs") or "truncate", stride=meta.get("stride"),
                    window_pooling=meta.get("window_pooling") or "mean")
        model.read_thresholds(meta, d / TASK_FILE)
        if options.backend == "onnx":
            from bertkit.inference.onnx import OnnxModel

            model.onnx = OnnxModel.from_options(d, options)
            if "logits" not in model.onnx.output_names:
                raise CheckpointError(f"{d}: its ONNX graph has no 'logits' output; re-export the task model "
                                      f"with `bertkit export onnx {d} --output DIR`")
        return model

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: bool = True) -> Path:
        d = Path(directory)
        id2label = {i: name for i, name in enumerate(self.labels)} if self.labels else None
        self.model.save_pretrained(d, id2label)
        if tokenizer:
            self.tokenizer.save(d)
        atomic_write_text(d / TASK_FILE, json.dumps(self.task_meta(), indent=2) + "\n")
        return d

    def task_meta(self) -> dict[str, Any]:
        """What ``bertkit_task.json`` holds: task, max_length, labels, how long inputs are read, a NER model's tag
        scheme, and tuned thresholds when there are."""
        meta: dict[str, Any] = {"task": self.task, "max_length": self.max_length, "labels": self.labels,
                                "long_inputs": self.long_inputs, "stride": self.stride,
                                "window_pooling": self.window_pooling}
        if self.scheme:
            meta["scheme"] = self.scheme
        if self.thresholds is not None:
            meta["thresholds"] = self.thresholds
        return meta

    def read_thresholds(self, meta: dict[str, Any], source: Path) -> None:
        """Take the tuned thresholds of a ``bertkit_task.json`` (``meta``), checked against the labels."""
        if meta.get("thresholds") is None:
            return
        if self.task != "multilabel":
            raise CheckpointError(f"{source}: 'thresholds' are for multilabel models, this one does {self.task}")
        try:
            self.thresholds = check_thresholds(meta["thresholds"], self.labels, str(source))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        log.info("%s: has %s; they decide unless a threshold ('fixed' for 0.5, or a number) is given",
                 source.parent, self.decision_thresholds()[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- batches and logits ---------------------------------------------------------------
    def featurize(self, data: TaskData, with_labels: bool = True, long_inputs: str | None = None,
                  stride: int | None = None) -> Features:
        """Token ids (and labels) of ``data``; long_inputs/stride None: the model's own setting."""
        if data.task != self.task and {data.task, self.task} != {"classification", "pair-classification"}:
            raise ValueError(f"{data.source}: data is for task {data.task!r}, this model does {self.task!r}")
        long_inputs = check_long_inputs(long_inputs or self.long_inputs)
        feats = featurize(data, self.tokenizer, self.max_length, self.label2id if with_labels else None,
                          long_inputs, self.stride if stride is None else stride)
        if feats.windows is not None:
            feats.windows.log(data.source, self.max_length)
        if feats.n_truncated:
            log.warning("%s: %d of %d examples were longer than max_length=%d tokens and were truncated",
                        data.source, feats.n_truncated, len(feats), self.max_length)
        return feats

    def loss(self, head: torch.nn.Module, batch: PackedBatch) -> Tensor:
        """Mean loss of one batch (the training engine's ``loss_fn``; ``head`` may be DDP around the head)."""
        logits = head(batch.input_ids, batch.packing, batch.token_type_ids)
        if batch.num_units == 0:  # every token of the batch is ignored: nothing to learn from
            return logits.sum() * 0.0
        own = head.module if isinstance(head, DistributedDataParallel) else head
        return own.loss(logits, batch.labels)

    def _head_logits(self, b: PackedBatch) -> Tensor:
        """(batch, num_labels) or (total_tokens, num_labels) logits of a packed batch, torch or onnxruntime."""
        if self.onnx is None:
            return self.model(b.input_ids, b.packing, b.token_type_ids).float()
        grid, mask, types, (seg, pos) = to_grid(b.input_ids, b.token_type_ids, b.packing, self.tokenizer.pad_id)
        logits = torch.from_numpy(self.onnx.run(grid.numpy(), mask.long().numpy(), types.numpy())["logits"])
        return logits[seg, pos] if self.task == "ner" else logits

    def logits(self, feats: Features, batch_size: int | None = None,
               window_pooling: str | None = None) -> tuple[list[np.ndarray], float]:
        """Per-example float32 logits in input order ((num_labels,) or (n_tokens, num_labels)), and mean loss.

        Windowed features (long_inputs="chunk") run window by window and come back one per example: sequence tasks
        pool the windows' logits (``window_pooling``, None: the model's), ner takes each token's row from its most
        central window (rows then follow the example's content tokens); the loss is the windows' mean."""
        pooling = check_window_pooling(window_pooling or self.window_pooling)
        self.model.eval()
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(feats)
        loss_sum, units = 0.0, 0
        with self.engine.running(self.device):
            for idx in self.engine.plan(feats.lengths, batch_size):
                b = make_batch(feats, idx).to(self.device)
                logits = self._head_logits(b)
                if b.labels is not None and b.num_units:
                    loss_sum += float(self.model.loss(logits, b.labels)) * b.num_units
                    units += b.num_units
                arr = logits.cpu().numpy()
                if self.task == "ner":
                    cu = b.packing.cu_seqlens.tolist()
                    for j, i in enumerate(b.indices):
                        out[i] = arr[cu[j]:cu[j + 1]]
                else:
                    for j, i in enumerate(b.indices):
                        out[i] = arr[j]
        if feats.windows is not None:
            out = reassemble(out, feats.windows, self.task == "ner", pooling)
        return out, loss_sum / max(units, 1)

    # ---- public API -----------------------------------------------------------------------
    def evaluate(self, data: TaskData | Features, batch_size: int | None = None,
                 gold: TaskData | None = None, threshold: Choice = None, *, long_inputs: str | None = None,
                 stride: int | None = None, window_pooling: str | None = None) -> dict[str, Any]:
        """Metrics of the task on labelled data (see ``MAIN_METRIC`` for the one training optimizes); classification
        and multi-label also give ``per_label``: {name: {precision, recall, f1, support}}. threshold (multi-label):
        None (the tuned thresholds if the model has them, else 0.5), "tuned", "fixed" (0.5), or a number. Long
        inputs are read as ``long_inputs``/``stride``/``window_pooling`` say (None: the model's setting)."""
        if isinstance(data, TaskData):
            if self.task == "ner":
                resolve_scheme(self.scheme, data)  # gold tags that break the model's scheme: an error naming them
            gold, feats = data, self.featurize(data, long_inputs=long_inputs, stride=stride)
        else:
            feats = data
        if gold is None:
            raise ValueError("evaluate(features) needs gold=TaskData")
        cuts = self.decision_thresholds(threshold)[0] if self.task == "multilabel" else None
        logits, loss = self.logits(feats, batch_size, window_pooling)
        true_labels = feats.labels if feats.windows is None else feats.example_labels
        out: dict[str, Any] = {"loss": loss}
        if self.task == "ner":
            # words cut off by truncation (or that tokenize to nothing) have no prediction: "O", as in predict()
            pred_tags = [tags + ["O"] * (len(true) - len(tags))
                         for tags, true in zip(self._word_tags(logits, feats), gold.labels, strict=True)]
            out.update(ner_metrics(gold.labels, pred_tags, self.scheme or "bio"))
        else:
            truth = np.array(gold.labels if self.task == "regression" else true_labels)
            out.update(sequence_metrics(self.task, self.labels, outputs_of(self.task, np.stack(logits)), truth, cuts))
        return out

    def decision_thresholds(self, threshold: Choice = None) -> tuple[np.ndarray, str]:
        """(L,) thresholds a multi-label prediction uses, and words saying which (see ``bertkit.thresholds``)."""
        return decision_thresholds(threshold, self.thresholds, self.labels)

    def outputs(self, data: TaskData, batch_size: int | None = None, *, long_inputs: str | None = None,
                stride: int | None = None, window_pooling: str | None = None) -> np.ndarray:
        """(n, L) probabilities (softmax; sigmoid for multilabel) or (n,) regression scores of a sequence task (long
        inputs as in ``predict``)."""
        if self.task == "ner":
            raise ValueError("outputs() is for sequence tasks; a NER model's are per token (use predict)")
        feats = self.featurize(data, with_labels=False, long_inputs=long_inputs, stride=stride)
        logits, _ = self.logits(feats, batch_size, window_pooling)
        return outputs_of(self.task, np.stack(logits))

    def word_outputs(self, data: TaskData, batch_size: int | None = None) -> list[np.ndarray]:
        """NER: per sentence, (n_words, L) tag probabilities (softmax) of each word's first sub-word, the one its
        tag is read from; a word without tokens (cut off by truncation) is "O" with probability 1, as predict
        tags it."""
        if self.task != "ner":
            raise ValueError(f"word_outputs() is for NER models, this one does {self.task}")
        feats = self.featurize(data, with_labels=False)
        assert feats.word_ids is not None
        logits, _ = self.logits(feats, batch_size)
        out = []
        for tok_logits, wids, words in zip(logits, feats.word_ids, data.words or [], strict=True):
            probs = np.zeros((len(words), len(self.labels)), dtype=np.float32)
            probs[:, self.label2id.get("O", 0)] = 1.0
            prev = None
            for t, w in enumerate(wids):
                if w is not None and w != prev:
                    x = tok_logits[t]
                    e = np.exp(x - x.max())
                    probs[w] = e / e.sum()
                prev = w
            out.append(probs)
        return out

    def tune_thresholds(self, dev: TaskData, batch_size: int | None = None) -> dict[str, float]:
        """Tune one threshold per label on labelled dev data (each label's best F1; ``bertkit.thresholds``), keep
        them on the model (``save_pretrained`` writes them) and return them."""
        if self.task != "multilabel":
            raise ValueError(f"thresholds are tuned for multilabel models, this one does {self.task}")
        feats = self.featurize(dev)
        truth = np.array(feats.labels if feats.windows is None else feats.example_labels, dtype=int)
        tuned = tune_thresholds(self.outputs(dev, batch_size), truth)
        self.thresholds = {name: float(t) for name, t in zip(self.labels, tuned, strict=True)}
        log.info("tuned on %s (%d examples): %s", dev.source, len(dev), self.decision_thresholds("tuned")[1])
        return dict(self.thresholds)

    def _word_tags(self, logits: list[np.ndarray], feats: Features) -> list[list[str]]:
        """Token logits -> one tag per word (its first sub-word's); words without tokens get "O"."""
        word_ids = feats.word_ids if feats.windows is None else feats.windows.example_word_ids
        assert word_ids is not None
        result = []
        for tok_logits, wids in zip(logits, word_ids, strict=True):
            n_words = max((w for w in wids if w is not None), default=-1) + 1
            tags, prev = {}, None
            for t, w in enumerate(wids):
                if w is not None and w != prev:
                    tags[w] = self.labels[int(tok_logits[t].argmax())]
                prev = w
            result.append([tags.get(w, "O") for w in range(n_words)])
        return result

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]], pairs: Sequence[str] | None = None,
                batch_size: int | None = None, threshold: Choice = None, aggregation_strategy: str | None = None,
                *, long_inputs: str | None = None, stride: int | None = None, window_pooling: str | None = None
                ) -> list[dict[str, Any]]:
        """Predictions in input order (threshold: multi-label only, as in ``evaluate``); long inputs read as
        ``long_inputs``/``stride``/``window_pooling`` say (None: the model's setting; "chunk" pools the windows'
        logits, probabilities come from the pooled logits; raw-text NER with an ``aggregation_strategy`` tags each
        token from the window where it is most central, so entities and offsets cover the whole text).

        classification: {"label", "probabilities": {name: p}}   multilabel: {"labels", "probabilities"}
        regression: {"score"}
        ner, word level (no ``aggregation_strategy``): texts are word lists (or strings, split on whitespace) ->
        {"words", "tags", "entities": [{"type", "start", "end", "text"}]}  (end exclusive, in words; plain tags:
        no entities)
        ner, raw text (``aggregation_strategy`` none/simple/first/average/max, texts are strings) ->
        {"text", "entities": [...]} with the entries of transformers' token-classification pipeline
        ({"entity_group" ("entity" and "index" for none), "score", "word", "start", "end"}, character offsets;
        ``bertkit.inference.token_aggregation``)
        """
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list")
        if aggregation_strategy is not None:
            return self._predict_text(texts, check_strategy(aggregation_strategy), batch_size,
                                      check_long_inputs(long_inputs or self.long_inputs),
                                      self.stride if stride is None else stride)
        if not texts:
            return []
        if self.task != "ner":
            if self.task == "pair-classification" and pairs is None:
                raise ValueError("this model classifies text pairs: pass pairs=[...]")
            data = TaskData(self.task, list(texts), None if pairs is None else list(pairs), [], None, "input")
            cuts = self.decision_thresholds(threshold)[0] if self.task == "multilabel" else None
            outputs = self.outputs(data, batch_size, long_inputs=long_inputs, stride=stride,
                                   window_pooling=window_pooling)
            return sequence_predictions(self.task, self.labels, outputs, cuts)
        words = [t.split() if isinstance(t, str) else list(t) for t in texts]
        data = TaskData("ner", [], None, [["O"] * len(w) for w in words], words, "input")
        feats = self.featurize(data, with_labels=False, long_inputs=long_inputs, stride=stride)
        logits, _ = self.logits(feats, batch_size)
        # words cut off by truncation get "O"
        return [ner_prediction(w, tags + ["O"] * (len(w) - len(tags)), self.scheme or "bio")
                for w, tags in zip(data.words or [], self._word_tags(logits, feats), strict=True)]

    def _predict_text(self, texts: Sequence[str], strategy: str, batch_size: int | None, long_inputs: str = "truncate",
                      stride: int | None = None) -> list[dict[str, Any]]:
        """Raw-text NER: tokenize with offsets, tag every token, aggregate as transformers' pipeline.

        long_inputs "chunk": a text past ``max_length`` is tagged in windows (``chunk_texts``), each token's logits
        from the window where it is most central, then aggregated over the whole text's tokens and offsets."""
        if self.task != "ner":
            raise ValueError(f"aggregation_strategy applies to token-classification (ner) models, not {self.task}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}: aggregation_strategy takes raw strings "
                                "(word lists are tagged word by word without it)")
        if not texts:
            return []
        if long_inputs == "truncate":
            batch = self.tokenizer.encode_offsets(list(texts), self.max_length)
            logits, _ = self.logits(Features(batch.ids, batch.type_ids, None, None, batch.n_truncated), batch_size)
        else:
            windows = chunk_texts(self.tokenizer, list(texts), None, self.max_length, stride)
            windows.log("input", self.max_length)
            logits, _ = self.logits(Features(windows.ids, windows.type_ids, None, None, 0, windows), batch_size)
            batch = self.tokenizer.encode_offsets(list(texts), UNTRUNCATED)
            logits = [_with_special_rows(x, special) for x, special in zip(logits, batch.special_mask, strict=True)]
        agg = TokenAggregator(self.tokenizer, self.labels, self.scheme or "bio")
        return [{"text": text, "entities": agg.entities(text, ids, offsets, special, x, strategy)}
                for text, ids, offsets, special, x in zip(texts, batch.ids, batch.offsets, batch.special_mask,
                                                          logits, strict=True)]


def _with_special_rows(rows: np.ndarray, special_mask: Sequence[int]) -> np.ndarray:
    """Logits of a windowed text's content tokens (n_content, L) -> (n_tokens, L) over its whole encoding,
    specials included (zero rows: the aggregator skips special tokens). A text that fit keeps its rows."""
    if len(rows) == len(special_mask):
        return rows
    content = np.flatnonzero(np.asarray(special_mask) == 0)
    if len(content) != len(rows) or (len(content) and content[-1] - content[0] + 1 != len(content)):
        raise RuntimeError(f"windowed tagging gave {len(rows)} token rows for a text of {len(content)} content "
                           "tokens: the tokenizer's untruncated encoding differs from its windows")
    out = np.zeros((len(special_mask), rows.shape[1]), dtype=rows.dtype)
    out[content] = rows
    return out


def _infer_task(d: Path, extra: dict[str, Any]) -> str:
    """Deprecated: ``infer_task(inspect_model_dir(d))``."""
    return infer_task(inspect_model_dir(d))


def load_task_model(directory: str | os.PathLike[str], device: str | torch.device | None = None,
                    engine: EngineOptions | None = None) -> TaskModel:
    """Deprecated here: ``bertkit.load_task_model`` (``bertkit.loader``) also reads compressed checkpoints."""
    return TaskModel.from_pretrained(directory, device=device, engine=engine)
