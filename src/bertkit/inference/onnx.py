"""ONNX export of an encoder (or a task model) and a small onnxruntime runner.

``export_onnx`` turns a model directory of any family (a transformers encoder or task model, a sentence-transformers
directory, a bertkit task model: whatever ``model.directory.load_encoder`` loads) into a self-contained one that also
holds ``model.onnx``:

- every file of the source except other weight formats is copied (config, tokenizer, sentence-transformers
  pooling files, ``bertkit_task.json``, and the safetensors weights, so torch can still load the directory);
- the graph takes ``input_ids``, ``attention_mask``, ``token_type_ids``, int64 ``(batch, sequence)`` with both
  axes dynamic (the sequence up to the model's ``max_tokens``; ``token_type_ids`` is taken, and unused, by families
  without token types), and returns ``last_hidden_state`` ``(batch, sequence, hidden)`` float32, plus ``logits``
  for task models through the family's own head (``(batch, num_labels)`` sequence classification, pooled as the
  family pools: first token, or ModernBERT's mean; ``(batch, sequence, num_labels)`` token classification);
- the written graph is checked (``onnx.checker``) and run by onnxruntime against torch on a padded batch;
- ``int8=True`` adds ``model.int8.onnx``: dynamic int8 weights (per channel) for every MatMul with a constant
  weight; activations are quantized per batch at run time;
- ``onnx_export.json`` records versions, files, exported path and the measured differences.

The graph runs the padded ``reference`` path through torch's default (dynamo, ``torch.export``) exporter. Every
family's positions trace with a dynamic length: DeBERTa's relative-embedding rows and gathers, MPNet's buckets and
ModernBERT's sliding-window masks are built for any length while exporting (``model/positions.py`` skips its
value-dependent shortcuts under ``torch.compiler.is_exporting()``); the parity check runs a length the export did
not see.
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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError, CheckpointError
from bertkit.inference.engine import AUTO_MIN_COSINE, EngineOptions
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import ModelDir, infer_task, inspect_model_dir, load_encoder
from bertkit.model.heads import SequenceClassifier, TokenClassifier, build_head, pool_padded, strip_task_keys
from bertkit.model.weights import find_weights_file
from bertkit.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("bertkit")

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
META_FILE = "onnx_export.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_PATH = "reference"  # see the module docstring for the measurement
PARITY_TOL = 1e-4
MIN_OPSET = 17  # LayerNormalization is one op from opset 17 on
# torch's exporter writes opset 18 and converts other opsets afterwards; converted to 17, a ``chunk`` (RoPE's
# rotate-half, GLU's gate / up) becomes a Split node that opset 17 does not allow, so ModernBERT needs 18
DEFAULT_OPSET = 18

# Never copied into the export: other weight formats, training state, earlier exports.
_SKIP_DIRS = {"onnx", "openvino"}
_SKIP_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data"}


class _Graph(nn.Module):
    """What gets exported: (input_ids, attention_mask, token_type_ids), each (batch, seq) int64 ->
    (last_hidden_state (batch, seq, hidden),) or (last_hidden_state, logits) through the family's task head."""

    def __init__(self, encoder: BertModel, head: SequenceClassifier | TokenClassifier | None = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.kind = "encoder" if head is None else head.kind

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        h = self.encoder(input_ids, attention_mask, token_type_ids, path=EXPORT_PATH).last_hidden_state
        if self.kind == "sequence":  # pooled as the family pools (first token, or the mean), then its head
            return h, self.head.logits_from(pool_padded(h, attention_mask, self.head.pooling))
        if self.kind == "token":
            return h, self.head.logits_from(h)
        return (h,)

    @property
    def output_names(self) -> list[str]:
        return ["last_hidden_state"] if self.kind == "encoder" else ["last_hidden_state", "logits"]


def _load_graph(d: str | os.PathLike[str] | ModelDir) -> _Graph:
    """The torch model of directory ``d``, any family: its task head when it is a task model (a bertkit task
    model, or a transformers ``XxxForSequence/TokenClassification``), else the encoder alone (an MLM head is left
    out)."""
    info = d if isinstance(d, ModelDir) else inspect_model_dir(d)
    encoder, heads, _ = load_encoder(info, path=EXPORT_PATH, who="ONNX export")
    if not info.is_task_model:
        return _Graph(encoder).eval()
    # As TaskModel.from_pretrained, without needing a tokenizer.
    task = info.task or infer_task(info)
    extra = encoder.config.extra
    num_labels = 1 if task == "regression" else max(len(extra.get("id2label") or {}), 1)
    strip_task_keys(encoder.config)
    head = build_head(encoder, task, num_labels)
    head.load_head_state(heads, source=str(info.path))
    return _Graph(head.encoder, head).eval()


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
    """A small padded batch for the checks: 3 rows of lengths (s, s // 2, 1), s = min(16, the model's limit)."""
    s = min(16, cfg.max_tokens)
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
    s = min(8, cfg.max_tokens)  # example sizes > 1, so torch.export does not specialize them
    example = tuple(torch.zeros(2, s, dtype=torch.long) for _ in INPUT_NAMES)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=cfg.max_tokens)
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


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """What a direct onnxruntime user sets: all graph optimizations, sequential execution, ``threads``
    intra-op threads (default: torch's thread count, so both runtimes use the same cores) and one inter-op
    thread. Set once, when the session is made."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return opts


def _session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


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


def _quantize(fp32: Path, int8: Path, batch: dict[str, np.ndarray], max_length: int) -> dict[str, float]:
    """Write the int8 graph; return the cosine (mean, min) of its mean-pooled embeddings vs fp32 on ``batch``
    and on the calibration texts (``calibration_cosine_min/mean``)."""
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
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            **_calibration_cosine(fp32.parent, max_length)}


def _calibration_cosine(directory: Path, max_length: int) -> dict[str, float]:
    """Worst / mean cosine of the int8 graph's mean-pooled states to fp32's on the built-in calibration texts
    (what ``dtype="auto"`` holds to ``AUTO_MIN_COSINE``); {} when the directory's tokenizer cannot be read."""
    from bertkit.data.tokenizer import Tokenizer
    from bertkit.inference.int8 import calibration_texts

    try:
        tok = Tokenizer.from_dir(directory)
    except Exception as e:  # an export without a readable tokenizer still gets its int8 graph
        log.warning("onnx int8: no calibration-text cosine (%s: %s)", type(e).__name__, e)
        return {}
    ids = tok.encode(calibration_texts(), max_length=max_length).ids
    sessions = [OnnxModel(directory, int8=False, threads=1), OnnxModel(directory, int8=True, threads=1)]
    cos: list[float] = []
    for start in range(0, len(ids), 16):
        chunk = ids[start:start + 16]
        lengths = [len(x) for x in chunk]
        flat = np.array([t for x in chunk for t in x], dtype=np.int64)
        seg = np.repeat(np.arange(len(chunk)), lengths)
        pooled = []
        for m in sessions:
            h = m.run_packed(flat, None, lengths, tok.pad_id)["last_hidden_state"]  # (tokens, hidden)
            v = np.zeros((len(chunk), h.shape[1]), np.float64)
            np.add.at(v, seg, h)
            pooled.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        cos.extend((pooled[0] * pooled[1]).sum(1).tolist())
    return {"calibration_cosine_min": float(min(cos)), "calibration_cosine_mean": float(np.mean(cos))}


def export_onnx(model: str | os.PathLike[str] | None, output: str | os.PathLike[str], *, int8: bool = False,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (built-in name, local directory or cached hub name; any family) into the directory ``output``.

    Writes ``model.onnx`` (and ``model.int8.onnx`` with ``int8``) next to copies of the source's config,
    tokenizer and weights, and ``onnx_export.json``. Raises BertkitError if onnxruntime and torch differ
    by more than 1e-4 on real tokens. Returns the output directory.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the export needs opset >= {MIN_OPSET}")
    info = inspect_model_dir(model)
    src = info.path
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the output must be a directory, and this is a file")
    graph = _load_graph(info)
    weights = find_weights_file(info.weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_model_files(src, out, weights)
    if files:
        log.info("onnx: copied %d model files from %s to %s", len(files), src, out)
    batch = _fixed_batch(graph.encoder.config)

    # The onnx package is needed only here (checker, opset): imported when exporting, so that loading an
    # export for inference does not pay its ~1 s import.
    import onnx

    t0 = time.perf_counter()
    with atomic_path(out / ONNX_FILE) as tmp:  # nothing replaces model.onnx unless it passes the checks
        _torch_export(graph, tmp, opset)
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as e:
            hint = f"; torch writes opset {DEFAULT_OPSET}: export with that opset" if opset != DEFAULT_OPSET else ""
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BertkitError(f"{out / ONNX_FILE}: the exported graph is not valid ONNX at opset {opset} "
                               f"({first}){hint}") from None
        written_opset = next(o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                             if o.domain in ("", "ai.onnx"))
        diff = _check_parity(graph, tmp, batch)
    files.append(ONNX_FILE)
    log.info("onnx: wrote %s (%s, opset %d, %s path) in %.1f s; max |onnxruntime - torch| %.2e",
             out / ONNX_FILE, graph.kind, written_opset, EXPORT_PATH, time.perf_counter() - t0, diff)

    quant = None
    if int8:
        quant = _quantize(out / ONNX_FILE, out / INT8_FILE, batch, graph.encoder.config.max_tokens)
        files.append(INT8_FILE)
        log.info("onnx: wrote %s; mean-pooled cosine vs fp32: mean %.4f, worst %.4f",
                 out / INT8_FILE, quant["cosine_mean"], quant["cosine_min"])
    elif (out / INT8_FILE).is_file():  # left by an earlier export: it no longer matches model.onnx
        (out / INT8_FILE).unlink()
        log.info("onnx: removed stale %s", out / INT8_FILE)

    meta = {
        "source": str(src), "family": info.family.name, "kind": graph.kind, "path": EXPORT_PATH,
        "exporter": "torch.onnx.export (dynamo)",
        "opset": written_opset, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": ort.__version__, "inputs": list(INPUT_NAMES), "outputs": graph.output_names,
        "max_length": graph.encoder.config.max_tokens,
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
    """An exported graph in an onnxruntime CPU session.

    ``run`` takes padded (batch, seq) numpy arrays as onnxruntime does; ``run_packed`` takes the engine's
    packed ids and returns packed states, building the padded grid and gathering the real tokens in numpy
    (no torch op between two onnxruntime calls, so the two runtimes' thread pools never take turns).
    """

    def __init__(self, directory: str | os.PathLike[str], int8: bool = False, threads: int | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / (INT8_FILE if int8 else ONNX_FILE)
        self.int8 = int8
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file; export one with "
                                  f"`bertkit export onnx MODEL --output {self.directory}`"
                                  + (" --int8" if int8 else ""))
        try:
            self.session = _session(self.path, threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt / foreign graphs
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = read_export_meta(self.directory)
        self.max_length: int | None = meta.get("max_length")

    @classmethod
    def from_options(cls, directory: str | os.PathLike[str], options: EngineOptions) -> OnnxModel:
        """The graph ``options`` ask for: ``model.int8.onnx`` with ``int8``; with ``dtype="auto"``, the int8
        graph where the export measured it within the auto quality bound on the calibration texts, else
        ``model.onnx`` (both logged)."""
        int8 = options.int8
        if options.dtype == "auto":
            q = (read_export_meta(Path(directory)).get("int8") or {}).get("calibration_cosine_min")
            int8 = has_onnx(directory, int8=True) and isinstance(q, float) and q >= AUTO_MIN_COSINE
            log.info("auto (onnx): %s (int8 graph %s)", INT8_FILE if int8 else ONNX_FILE,
                     "absent" if not has_onnx(directory, int8=True) else
                     f"worst cosine {q:.4f} on the calibration texts" if isinstance(q, float) else "not measured")
        return cls(directory, int8=int8, threads=options.threads)

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
        # Only the inputs the graph declares (graphs exported elsewhere may lack token_type_ids); int64
        # C-contiguous arrays go to onnxruntime as they are (asarray copies nothing then).
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feed.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))

    def run_packed(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None, lengths: Sequence[int],
                   pad_id: int = 0, outputs: Sequence[str] = ("last_hidden_state",)) -> dict[str, np.ndarray]:
        """Packed sequences -> outputs. input_ids, token_type_ids: (total_tokens,) back to back, ``lengths``
        (batch,) tokens each. Token outputs come back packed, (total_tokens, ...); others (logits of a
        sequence task) as the graph returns them, (batch, ...)."""
        lens = np.asarray(lengths, dtype=np.int64)
        mask = np.arange(int(lens.max()))[None, :] < lens[:, None]  # (batch, seq), right padding
        grid = np.full(mask.shape, pad_id, dtype=np.int64)
        grid[mask] = input_ids  # row-major order of the mask is the packed order
        types = np.zeros_like(grid)
        if token_type_ids is not None:
            types[mask] = token_type_ids
        got = self.run(grid, mask.astype(np.int64), types)
        return {k: (got[k][mask] if got[k].ndim >= 3 else got[k]) for k in outputs}


def read_export_meta(directory: Path) -> dict:
    """``onnx_export.json`` of an export directory, or {} (graphs exported elsewhere have none)."""
    meta = directory / META_FILE
    if not meta.is_file():
        return {}
    with contextlib.suppress(ValueError, OSError):
        data = json.loads(meta.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    return {}
