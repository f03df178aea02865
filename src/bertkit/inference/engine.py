"""The inference engine behind ``embed``, ``predict``, ``fill-mask`` and the server.

One place decides how inference runs:

- **Length bucketing with a token budget.** Sequences are sorted longest first and cut into batches
  of at most ``max_batch_tokens`` real tokens (and ``max_batch_size`` sequences), so a batch of short
  texts holds many of them and a batch of long ones few, and GEMMs stay large either way.
- **Padding-free execution.** Each batch is one packed ``(total_tokens,)`` id tensor (see
  ``model/attention.py``); equal-length neighbours form attention runs.
- **Precision.** ``fp32`` (the default, exact); ``bf16`` (linear weights stored in bf16, autocast: GEMMs,
  attention and GELU in bf16; embeddings, LayerNorm and the residual stream in fp32), fast where the CPU
  has native bf16 (AVX512-BF16 / AMX) or on GPU; ``fp16`` likewise, on GPU only. ``int8`` quantizes the
  linear layers (``inference/int8.py``) on the kernel this CPU runs fastest (``inference/cpu.py``).
- **auto** (``dtype="auto"``) takes the fastest precision of this machine (``cpu.kernels().order``: e.g.
  int8 > fp32 on an AVX2 CPU, bf16 / int8 by measurement where both are native) that meets the quality
  bound: on the built-in calibration texts, the mean-pooled last hidden states of the candidate have a
  worst-case cosine of at least ``AUTO_MIN_COSINE`` (0.99) to fp32's; otherwise the next one, down to
  fp32. The decision is cached per model (weights hash) and machine, and logged.
- **Threads** (``torch.set_num_threads``) and ``torch.inference_mode``.

What runs is logged once per model load, never chosen silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.data.batch import pack as pack_sequences
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.inference import cpu, int8
from bertkit.inference.cpu import INT8_KERNELS
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import cache_dir

log = logging.getLogger("bertkit")

DTYPES = ("fp32", "bf16", "fp16", "auto")
BACKENDS = ("torch", "onnx")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_MAX_BATCH = 32  # sequences per onnxruntime batch (see Engine.plan)
AUTO_MIN_COSINE = 0.99  # dtype="auto": worst cosine to fp32 of mean-pooled states on the calibration texts


@dataclass
class EngineOptions:
    """How a model runs at inference. Maps 1:1 to the ``--dtype/--int8/--backend/...`` CLI flags."""

    dtype: str = "fp32"  # fp32 | bf16 | fp16 (GPU) | auto (the fastest meeting AUTO_MIN_COSINE)
    int8: bool = False  # int8 linear layers (torch backend: inference/int8.py; onnx: the exported int8 graph)
    kernel: str | None = None  # int8 kernel (int_mm | fbgemm); None: this CPU's choice (inference/cpu.py)
    backend: str = "torch"  # torch | onnx
    max_batch_tokens: int = 8192  # real tokens per engine batch
    max_batch_size: int = 512  # sequences per engine batch
    threads: int | None = None  # torch intra-op threads; None leaves torch's default

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_batch_tokens < 1 or self.max_batch_size < 1:
            raise ValueError(f"max_batch_tokens and max_batch_size must be >= 1, got "
                             f"{self.max_batch_tokens} and {self.max_batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.int8 and self.dtype == "fp16":
            raise ValueError("int8 runs its non-quantized parts in fp32 or bf16, not fp16")
        if self.int8 and self.dtype == "auto":
            raise ValueError("dtype auto chooses int8 itself where it pays; leave int8 off")
        if self.kernel is not None and self.kernel not in INT8_KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(INT8_KERNELS)}, got {self.kernel!r}")

    def describe(self) -> str:
        parts = [f"backend {self.backend}", f"dtype {self.dtype}", *(["int8 linears"] if self.int8 else []),
                 f"batches of <= {self.max_batch_tokens} tokens / {self.max_batch_size} sequences, longest first",
                 f"{self.threads or torch.get_num_threads()} threads"]
        return ", ".join(parts)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Length bucketing under a token budget.

    lengths: (n,) tokens per sequence. Returns arrays of input indices: sorted by length, longest first
    (ties keep input order); each batch has at most ``max_batch_size`` sequences and at most
    ``max_batch_tokens`` tokens, except a single sequence longer than the budget, which runs alone.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start, tokens = 0, 0
    for pos, i in enumerate(order):
        n = int(lens[i])
        if pos > start and (tokens + n > max_batch_tokens or pos - start >= max_batch_size):
            batches.append(order[start:pos])
            start, tokens = pos, 0
        tokens += n
    if len(order) > start:
        batches.append(order[start:])
    return batches


def pack(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None, indices: np.ndarray,
         device: torch.device) -> tuple[Tensor, Tensor, Packing]:
    """Sequences ``indices`` back to back: ids (total_tokens,), type ids (total_tokens,), their packing."""
    return pack_sequences([ids[i] for i in indices], None if type_ids is None else [type_ids[i] for i in indices],
                          device)


class Engine:
    """Applies ``EngineOptions`` to a model and runs batches under them.

    After ``prepare``: ``dtype`` (the compute dtype autocast runs: fp32 / bf16 / fp16) and ``int8`` (whether
    the linear layers are int8, and on which ``kernel``) say what was chosen, ``dtype="auto"`` resolved.
    """

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.dtype = "fp32" if self.options.dtype == "auto" else self.options.dtype
        self.int8 = self.options.int8
        self.kernel: str | None = None
        self.auto_cosine: float | None = None  # the worst cosine auto measured for its choice

    @property
    def precision(self) -> str:
        """What runs: int8, bf16, fp16 or fp32 (int8 with bf16 autocast reads int8+bf16)."""
        if self.int8:
            return "int8" if self.dtype == "fp32" else f"int8+{self.dtype}"
        return self.dtype

    def describe(self) -> str:
        o = self.options
        what = f"dtype {self.precision}" + (f" (auto, worst cosine {self.auto_cosine:.4f})" if o.dtype == "auto"
                                            and self.auto_cosine is not None else " (auto)" if o.dtype == "auto"
                                            else "")
        kernel = f" on {self.kernel}" if self.int8 and self.kernel else ""
        parts = [f"backend {o.backend}", what + kernel,
                 f"batches of <= {o.max_batch_tokens} tokens / {o.max_batch_size} sequences, longest first",
                 f"{o.threads or torch.get_num_threads()} threads"]
        return ", ".join(parts)

    def prepare(self, encoder: BertModel, tokenizer: WordPieceTokenizer, device: torch.device,
                name: str = "model") -> BertModel:
        """Put ``encoder`` in eval mode on ``device`` with the options' threads and precision; log what runs.

        int8 (torch backend) quantizes the encoder's linear layers in place, smoothed with activation
        maxima from ``calibration_texts`` (see ``inference/int8.py``); task heads stay in float.
        ``dtype="auto"`` picks the precision here (see the module docstring).
        """
        o = self.options
        if o.threads is not None:
            torch.set_num_threads(o.threads)
        if o.dtype == "fp16" and device.type != "cuda":
            raise ValueError("dtype fp16 needs a GPU; on CPU use bf16")
        encoder.to(device).eval()
        if o.backend == "torch":
            if o.dtype == "auto":
                self._auto(encoder, tokenizer, device, name)
            elif o.int8:
                self.kernel = o.kernel or _default_kernel(device)
                texts = int8.calibration_texts()
                int8.quantize_encoder(encoder, self.text_batches(tokenizer, texts, encoder.config.max_tokens, device),
                                      int8.calibration_key(int8.weights_hash(encoder), texts), name=name,
                                      kernel=self.kernel)
            elif o.dtype != "fp32":
                if o.dtype == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
                    log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 runs emulated, several "
                                "times slower than fp32; dtype auto never picks it here")
                cast_linears(encoder, _TORCH_DTYPES[o.dtype])
        log.info("inference engine for %s: %s", name, self.describe())
        return encoder

    def _auto(self, encoder: BertModel, tokenizer: WordPieceTokenizer, device: torch.device, name: str) -> None:
        """Resolve dtype="auto" in place: the first precision of this machine's order whose worst cosine to
        fp32 on the calibration texts is >= AUTO_MIN_COSINE (cached per model and machine)."""
        if device.type == "cpu":
            choice = cpu.kernels()  # looked up on the module at call time: tests replace it there
            order, kernel, machine = choice.order, self.options.kernel or choice.int8, cpu.detect().key
        else:  # GPU: half precision if it holds the bound
            half = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
            order, kernel, machine = (half, "fp32"), "int_mm", f"{device.type} {torch.version.cuda}"
        weights = int8.weights_hash(encoder)
        key = _decision_key(weights, machine, kernel, order)
        decided = _read_decision(key)
        texts = int8.calibration_texts()
        ids = tokenizer.encode(texts, max_length=encoder.config.max_tokens).ids
        ref: list[Tensor] = []
        act_max = None
        if "int8" in order and (decided is None or decided["precision"] == "int8"):
            # One fp32 pass gives both the smoothing maxima and the reference (skipped when cached).
            act_max = None if decided is None else int8.load_cached_maxima(int8.calibration_key(weights))
            if act_max is None:
                act_max = int8.smoothing_maxima(encoder, self.batches(ids, None, device), int8.calibration_key(weights),
                                             also=lambda h, packing: ref.append(_mean_pooled(h, packing)))
        for precision in order if decided is None else (decided["precision"],):
            if precision == "fp32":
                self.dtype, self.int8, self.auto_cosine = "fp32", False, 1.0
                break
            if decided is None and not ref:
                ref.append(torch.cat(self._pooled(encoder, ids, device, None)))
            if precision == "int8":
                originals = {n: encoder.get_submodule(n) for n in int8.linear_names(encoder)}
                int8.quantize_linears(encoder, (), act_max, int8.DEFAULT_ALPHA, log_name=name, kernel=kernel)
                undo = lambda originals=originals: int8.restore_linears(encoder, originals)  # noqa: E731
                amp = None
            else:
                undo = cast_linears(encoder, _TORCH_DTYPES[precision])
                amp = _TORCH_DTYPES[precision]
            if decided is not None:
                cos = float(decided["cosine_worst"])
            else:
                got = torch.cat(self._pooled(encoder, ids, device, amp))
                cos = float((got * torch.cat(ref)).sum(1).min())
            if cos >= AUTO_MIN_COSINE:
                self.int8, self.dtype = precision == "int8", "fp32" if precision == "int8" else precision
                self.kernel = kernel if precision == "int8" else None
                self.auto_cosine = cos
                break
            log.info("auto: %s has worst cosine %.4f < %g to fp32 on the calibration texts; not used",
                     precision, cos, AUTO_MIN_COSINE)
            undo()
        else:  # a cached decision no longer in this machine's order
            self.dtype, self.int8, self.auto_cosine = "fp32", False, 1.0
        if decided is None:
            _write_decision(key, {"precision": self.precision, "cosine_worst": self.auto_cosine})
        log.info("auto: %s for %s (order %s%s)", self.precision, name, " > ".join(order),
                 ", cached decision" if decided is not None else "")

    def _pooled(self, encoder: BertModel, ids: list[list[int]], device: torch.device,
                amp: torch.dtype | None) -> list[Tensor]:
        """L2-normalized mean-pooled last hidden states (n, hidden), in batch order, for the auto check."""
        out = []
        with torch.inference_mode(), (torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()):
            for _, flat, types, packing in self.batches(ids, None, device):
                out.append(_mean_pooled(encoder.forward_packed(flat, packing, types), packing))
        return out

    @contextlib.contextmanager
    def running(self, device: torch.device) -> Iterator[None]:
        """inference_mode, plus autocast for bf16 / fp16."""
        # auto: what prepare chose; else the options as they are now (a caller may switch them between runs)
        dtype = _TORCH_DTYPES.get(self.dtype if self.options.dtype == "auto" else self.options.dtype)
        with torch.inference_mode():
            if dtype is None or self.options.backend != "torch":
                yield
            else:
                with torch.autocast(device.type, dtype=dtype):
                    yield

    def plan(self, lengths: Sequence[int], max_batch_size: int | None = None) -> list[np.ndarray]:
        """Input indices of each batch (``plan_batches`` under the options' budget); ``max_batch_size``
        lowers the sequence cap."""
        cap = self.options.max_batch_size if max_batch_size is None else min(max_batch_size,
                                                                             self.options.max_batch_size)
        if cap < 1:
            raise ValueError(f"batch_size must be >= 1, got {cap}")
        if self.options.backend == "onnx":
            # onnxruntime runs padded (batch, seq) grids: its attention and arena grow with the batch. Measured
            # on MiniLM, 300 BBC spans, 2 threads: 8192-token batches (up to 512 texts) 3x slower than plain
            # onnxruntime on sorted batches of 32 (53 vs 16 s on a loaded machine), capped at 32 as fast (20 s).
            cap = min(cap, ONNX_MAX_BATCH)
        return plan_batches(lengths, self.options.max_batch_tokens, cap)

    def batches(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None,
                device: torch.device, max_batch_size: int | None = None
                ) -> Iterator[tuple[np.ndarray, Tensor, Tensor, Packing]]:
        """Yield (input indices, ids (T,), type ids (T,), packing) for each planned batch, longest first."""
        for idx in self.plan([len(x) for x in ids], max_batch_size):
            yield (idx, *pack(ids, type_ids, idx, device))

    def text_batches(self, tokenizer: WordPieceTokenizer, texts: list[str], max_length: int, device: torch.device
                     ) -> Iterator[tuple[np.ndarray, Tensor, Tensor, Packing]]:
        """``batches`` of ``texts`` (e.g. calibration texts), tokenized on the first batch asked for: a consumer
        that needs none (cached calibration maxima) pays for no tokenization."""
        ids = tokenizer.encode(texts, max_length=max_length).ids
        yield from self.batches(ids, None, device)


def cast_linears(encoder: nn.Module, dtype: torch.dtype) -> Callable[[], None]:
    """Store the linear weights in ``dtype``; returns a function that puts the original tensors back.

    autocast then casts only activations, and a batch-1 forward, which mostly streams weights from
    memory, reads half the bytes. Embeddings, LayerNorms and the residual stream stay fp32."""
    saved = []
    for m in encoder.modules():
        if type(m) is nn.Linear:
            saved.append((m, m.weight.data, None if m.bias is None else m.bias.data))
            m.to(dtype)

    def undo() -> None:
        for m, w, b in saved:
            m.weight.data = w
            if b is not None:
                m.bias.data = b

    return undo


def _mean_pooled(h: Tensor, packing: Packing) -> Tensor:
    """(total_tokens, hidden) -> L2-normalized mean over each sequence (batch, hidden), fp32."""
    # segment_reduce, not index_add_: with 2 threads index_add_ took 44 ms for 18 tokens here (7 us on one)
    lengths = torch.tensor(packing.lengths, device=h.device)
    sums = torch.segment_reduce(h.float(), "sum", lengths=lengths, axis=0)
    return torch.nn.functional.normalize(sums, dim=1)  # the mean's 1/length cancels in the normalization


def _default_kernel(device: torch.device) -> str:
    return cpu.kernels().int8 if device.type == "cpu" else "int_mm"


def _decision_key(weights: str, machine: str, kernel: str, order: Sequence[str]) -> str:
    parts = [weights, machine, kernel, ",".join(order), f"{AUTO_MIN_COSINE}", "auto-v1"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _decision_file(key: str) -> Path:
    return cache_dir() / "auto" / f"{key}.json"


def _read_decision(key: str) -> dict | None:
    try:
        d = json.loads(_decision_file(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(d, dict) and d.get("precision") in ("int8", "bf16", "fp16", "fp32")
    return d if ok and isinstance(d.get("cosine_worst"), float | int) else None


def _write_decision(key: str, decision: dict) -> None:
    try:
        atomic_write_text(_decision_file(key), json.dumps(decision) + "\n")
    except OSError as e:
        log.debug("auto: could not cache the decision (%s)", e)


def _cpu_has_bf16() -> bool:
    return cpu.detect().native_bf16
