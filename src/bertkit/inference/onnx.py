"""ONNX export of an encoder (or a task model) and a small onnxruntime runner.

``export_onnx`` turns a model directory into a self-contained one that also holds ``model.onnx``:

- every file of the source except other weight formats is copied (config, tokenizer, sentence-transformers
  pooling files, ``bertkit_task.json``, and the safetensors weights, so torch can still load the directory);
- the graph takes ``input_ids``, ``attention_mask``, ``token_type_ids``, int64 ``(batch, sequence)`` with both
  axes dynamic, and returns ``last_hidden_state`` ``(batch, sequence, hidden)`` float32, plus ``logits`` for
  task models (``(batch, num_labels)`` sequence, ``(batch, sequence, num_labels)`` token classification);
- the written graph is checked (``onnx.checker``) and run by onnxruntime against torch on a padded batch;
- ``int8=True`` adds ``model.int8.onnx``: dynamic int8 weights (per channel) for every MatMul with a constant
  weight; activations are quantized per batch at run time;
- ``onnx_export.json`` records versions, files, exported path and the measured differences.

The graph runs the padded ``reference`` path through torch's default (dynamo, ``torch.export``) exporter.
Measured on all-MiniLM-L6-v2, onnxruntime 1.32, one thread, (32, 128) batch: reference 1.20 s vs sdpa
1.28 s (8 x 32: 61.8 vs 62.6 ms); the sdpa graph also carries IsNaN/Where guards for all-masked rows.
The legacy TorchScript exporter is deprecated, and on the sdpa path it silently drops ``attention_mask``
from the graph (which the parity check here would catch).

``OnnxModel`` runs such a graph on padded numpy batches; the Encoder / TaskModel backends build the padded
grid and gather the real tokens back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError, CheckpointError
from bertkit.hub import resolve_model_dir
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.heads import strip_task_keys
from bertkit.model.weights import find_weights_file, load_pretrained
from bertkit.task_model import TASK_FILE, _infer_task, build_head
from bertkit.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("bertkit")

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
META_FILE = "onnx_export.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_PATH = "reference"  # see the module docstring for the measurement
PARITY_TOL = 1e-4
MIN_OPSET = 17  # LayerNormalization is one op from opset 17 on

_TASK_ARCHITECTURES = ("BertForSequenceClassification", "BertForTokenClassification")
# Never copied into the export: other weight formats, training state, earlier exports.
_SKIP_DIRS = {"onnx", "openvino"}
_SKIP_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data"}


class _Graph(nn.Module):
    """What gets exported: (input_ids, attention_mask, token_type_ids), each (batch, seq) int64 ->
    (last_hidden_state (batch, seq, hidden),) or (last_hidden_state, logits)."""

    def __init__(self, encoder: BertModel, classifier: nn.Linear | None = None, kind: str = "encoder") -> None:
        super().__init__()
        self.encoder, self.classifier, self.kind = encoder, classifier, kind

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        h = self.encoder(input_ids, attention_mask, token_type_ids, path=EXPORT_PATH).last_hidden_state
        if self.kind == "sequence":  # BertForSequenceClassification: classify the pooler output ([CLS])
            return h, self.classifier(self.encoder.pooler(h[:, 0]))
        if self.kind == "token":
            return h, self.classifier(h)
        return (h,)

    @property
    def output_names(self) -> list[str]:
        return ["last_hidden_state"] if self.kind == "encoder" else ["last_hidden_state", "logits"]


def _load_graph(d: Path) -> _Graph:
    """The torch model of directory ``d``: its task head when it is a task model, else the encoder alone
    (a BertForMaskedLM's head is left out)."""
    encoder, heads = load_pretrained(d, path=EXPORT_PATH)
    extra = encoder.config.extra
    arch = (extra.get("architectures") or [""])[0]
    if not (d / TASK_FILE).is_file() and arch not in _TASK_ARCHITECTURES:
        return _Graph(encoder).eval()
    # As TaskModel.from_pretrained, without needing a tokenizer.
    try:
        meta = json.loads((d / TASK_FILE).read_text(encoding="utf-8")) if (d / TASK_FILE).is_file() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / TASK_FILE}: not valid JSON ({e})") from None
    task = meta.get("task") or _infer_task(d, extra)
    num_labels = 1 if task == "regression" else max(len(extra.get("id2label") or {}), 1)
    strip_task_keys(encoder.config)
    head = build_head(encoder, task, num_labels)
    head.load_head_state(heads, source=str(d))
    return _Graph(head.encoder, head.classifier, head.kind).eval()


def _copy_model_files(src: Path, out: Path, weights: Path) -> list[str]:
    """Copy ``src`` into ``out`` (atomically, file by file) without other weight formats; relative names."""
    if src.resolve() == out.resolve():
        return []  # exporting in place: the files are already there
    out_abs = out.resolve()
    copied, stack = [], [src]
    while stack:
        for p in sorted(stack.pop().iterdir()):
            if p.name.startswith(".") or out_abs.is_relative_to(p.resolve()):  # hidden, or holds the output
                continue
            if p.is_dir():
                if p.name not in _SKIP_DIRS:
                    stack.append(p)
                continue
            if p != weights and (p.suffix in _SKIP_SUFFIXES or p.name == META_FILE):
                continue
            rel = p.relative_to(src)
            with atomic_path(out / rel) as tmp:
                shutil.copyfile(p, tmp)
            copied.append(rel.as_posix())
    return copied


def _fixed_batch(cfg: EncoderConfig) -> dict[str, np.ndarray]:
    """A small padded batch for the checks: 3 rows of lengths (s, s // 2, 1), s = min(16, max positions)."""
    s = min(16, cfg.max_position_embeddings)
    lengths = np.array([s, max(s // 2, 1), 1])
    mask = np.arange(s)[None, :] < lengths[:, None]  # (3, s) right padding
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, s))
    ids[~mask] = cfg.pad_token_id
    types = np.zeros_like(ids)
    if cfg.type_vocab_size > 1:  # a sentence pair in row 0
        types[0, s // 2:] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
            "token_type_ids": types.astype(np.int64)}


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and quantizer log at length about things that do not concern the user (opset fallback,
    torchvision, one line per tensor); the quantizer logs on the root logger itself."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir",
                                                    "onnxruntime")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        root.addFilter(_errors_only)  # records logged on the root logger itself, not on "bertkit"
        try:
            yield
        finally:
            root.removeFilter(_errors_only)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _torch_export(graph: _Graph, path: Path, opset: int) -> None:
    cfg = graph.encoder.config
    s = min(8, cfg.max_position_embeddings)  # example sizes > 1, so torch.export does not specialize them
    example = tuple(torch.zeros(2, s, dtype=torch.long) for _ in INPUT_NAMES)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=cfg.max_position_embeddings)
    dynamic = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    try:
        with _quiet():
            program = torch.onnx.export(graph, example, None, input_names=list(INPUT_NAMES),
                                        output_names=graph.output_names, opset_version=opset, dynamo=True,
                                        dynamic_shapes=dynamic, verbose=False)
            program.save(str(path), external_data=False)  # one file; BERT-large is 1.3 GB, under protobuf's 2 GB
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BertkitError(f"torch.onnx.export failed ({type(e).__name__}: {first})") from e


def _session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_parity(graph: _Graph, path: Path, batch: dict[str, np.ndarray]) -> float:
    """Max abs difference onnxruntime vs torch over real tokens of ``batch``; raises above ``PARITY_TOL``."""
    with torch.inference_mode():
        expected = graph(*(torch.from_numpy(batch[k]) for k in INPUT_NAMES))
    got = _session(path, threads=1).run(None, batch)
    real = batch["attention_mask"].astype(bool)  # (batch, seq)
    diff = 0.0
    for name, want, have in zip(graph.output_names, expected, got, strict=True):
        d = np.abs(have - want.numpy())
        d = d[real] if d.ndim == 3 else d  # (batch, seq, ...): compare real tokens only
        if not np.isfinite(d).all():
            raise BertkitError(f"{path}: output '{name}' is not finite in onnxruntime or torch")
        diff = max(diff, float(d.max()))
    if diff > PARITY_TOL:
        raise BertkitError(f"{path}: onnxruntime differs from torch by {diff:.2e} (> {PARITY_TOL:g}) on real tokens")
    return diff


def _mean_pooled(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(batch, seq, hidden), (batch, seq) -> L2-normalized mean over real tokens (batch, hidden)."""
    m = mask[..., None].astype(np.float32)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _quantize(fp32: Path, int8: Path, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Write the int8 graph; return the cosine (mean, min) of its mean-pooled embeddings vs fp32 on ``batch``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmpdir:
        # ORT's recommended pre-pass (shape inference + basic graph optimizations) before quantizing;
        # measured on MiniLM: same cosine as quantizing the raw graph, slightly faster graph.
        source = Path(tmpdir) / "preprocessed.onnx"
        try:
            with _quiet():
                quant_pre_process(str(fp32), str(source))
        except Exception as e:
            log.warning("onnx int8: pre-processing failed (%s: %s); quantizing the exported graph as is",
                        type(e).__name__, e)
            source = fp32
        with atomic_path(int8) as tmp, _quiet():
            quantize_dynamic(str(source), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    real = batch["attention_mask"]
    ref = _mean_pooled(_session(fp32, threads=1).run(["last_hidden_state"], batch)[0], real)
    got = _mean_pooled(_session(int8, threads=1).run(["last_hidden_state"], batch)[0], real)
    cos = (ref * got).sum(1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def export_onnx(model: str | os.PathLike[str] | None, output: str | os.PathLike[str], *, int8: bool = False,
                opset: int = 17) -> Path:
    """Export ``model`` (built-in name or local HF BERT directory) into the directory ``output``.

    Writes ``model.onnx`` (and ``model.int8.onnx`` with ``int8``) next to copies of the source's config,
    tokenizer and weights, and ``onnx_export.json``. Raises BertkitError if onnxruntime and torch differ
    by more than 1e-4 on real tokens. Returns the output directory.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the export needs opset >= {MIN_OPSET}")
    src = resolve_model_dir(model)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the output must be a directory, and this is a file")
    graph = _load_graph(src)
    weights = find_weights_file(src)
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_model_files(src, out, weights)
    if files:
        log.info("onnx: copied %d model files from %s to %s", len(files), src, out)
    batch = _fixed_batch(graph.encoder.config)

    t0 = time.perf_counter()
    with atomic_path(out / ONNX_FILE) as tmp:  # nothing replaces model.onnx unless it passes the checks
        _torch_export(graph, tmp, opset)
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as e:
            raise BertkitError(f"{out / ONNX_FILE}: the exported graph is not valid ONNX ({e})") from None
        written_opset = next(o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                             if o.domain in ("", "ai.onnx"))
        diff = _check_parity(graph, tmp, batch)
    files.append(ONNX_FILE)
    log.info("onnx: wrote %s (%s, opset %d, %s path) in %.1f s; max |onnxruntime - torch| %.2e",
             out / ONNX_FILE, graph.kind, written_opset, EXPORT_PATH, time.perf_counter() - t0, diff)

    quant = None
    if int8:
        quant = _quantize(out / ONNX_FILE, out / INT8_FILE, batch)
        files.append(INT8_FILE)
        log.info("onnx: wrote %s; mean-pooled cosine vs fp32: mean %.4f, worst %.4f",
                 out / INT8_FILE, quant["cosine_mean"], quant["cosine_min"])
    elif (out / INT8_FILE).is_file():  # left by an earlier export: it no longer matches model.onnx
        (out / INT8_FILE).unlink()
        log.info("onnx: removed stale %s", out / INT8_FILE)

    meta = {
        "source": str(src), "kind": graph.kind, "path": EXPORT_PATH, "exporter": "torch.onnx.export (dynamo)",
        "opset": written_opset, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": ort.__version__, "inputs": list(INPUT_NAMES), "outputs": graph.output_names,
        "max_length": graph.encoder.config.max_position_embeddings,
        "parity_max_abs_diff": diff, "parity_tolerance": PARITY_TOL,
        "int8": None if quant is None else {"file": INT8_FILE, "quantization": "dynamic, QInt8 weights, per channel",
                                            **quant},
        "files": [*files, META_FILE],
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    log.info("onnx: wrote %s", out / META_FILE)
    return out


def has_onnx(directory: str | os.PathLike[str], int8: bool = False) -> bool:
    """Whether ``directory`` holds an exported graph (``model.onnx``, or ``model.int8.onnx`` with ``int8``)."""
    return (Path(directory) / (INT8_FILE if int8 else ONNX_FILE)).is_file()


class OnnxModel:
    """An exported graph in an onnxruntime CPU session."""

    def __init__(self, directory: str | os.PathLike[str], int8: bool = False, threads: int | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / (INT8_FILE if int8 else ONNX_FILE)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file; export one with "
                                  f"`bertkit export onnx MODEL --output {self.directory}`"
                                  + (" --int8" if int8 else ""))
        try:
            self.session = _session(self.path, threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt / foreign graphs
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        meta = self.directory / META_FILE
        self.max_length: int | None = None
        if meta.is_file():
            with contextlib.suppress(ValueError, OSError):
                self.max_length = json.loads(meta.read_text(encoding="utf-8")).get("max_length")

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray) -> dict[str, np.ndarray]:
        """All (batch, seq) int64 -> {output name: array}, e.g. last_hidden_state (batch, seq, hidden)."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        shapes = {np.shape(v) for v in feed.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"input_ids, attention_mask and token_type_ids must share one (batch, seq) shape, "
                             f"got {', '.join(f'{k} {np.shape(v)}' for k, v in feed.items())}")
        if self.max_length is not None and np.shape(input_ids)[1] > self.max_length:
            raise ValueError(f"sequence of {np.shape(input_ids)[1]} tokens exceeds the model's "
                             f"max_position_embeddings={self.max_length}; truncate the input")
        # Only the inputs the graph declares (graphs exported elsewhere may lack token_type_ids).
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feed.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))
