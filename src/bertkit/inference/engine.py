"""The inference engine behind ``embed``, ``predict``, ``fill-mask`` and the server.

One place decides how inference runs:

- **Length bucketing with a token budget.** Sequences are sorted longest first and cut into batches
  of at most ``max_batch_tokens`` real tokens (and ``max_batch_size`` sequences), so a batch of short
  texts holds many of them and a batch of long ones few, and GEMMs stay large either way.
- **Padding-free execution.** Each batch is one packed ``(total_tokens,)`` id tensor (see
  ``model/attention.py``); equal-length neighbours form attention runs.
- **Precision.** ``fp32``; ``bf16`` (linear weights stored in bf16, autocast: GEMMs, attention and GELU
  in bf16; embeddings, LayerNorm and the residual stream in fp32), where the CPU has native bf16 or on
  GPU; ``fp16`` likewise, on GPU only. ``int8`` quantizes the linear layers (``inference/int8.py``).
- **Threads** (``torch.set_num_threads``) and ``torch.inference_mode``.

What runs is logged once per model load, never chosen silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel

log = logging.getLogger("bertkit")

DTYPES = ("fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnx")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EngineOptions:
    """How a model runs at inference. Maps 1:1 to the ``--dtype/--int8/--backend/...`` CLI flags."""

    dtype: str = "fp32"  # fp32 | bf16 | fp16 (GPU)
    int8: bool = False  # int8 linear layers (torch backend: inference/int8.py; onnx: the exported int8 graph)
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
    flat = torch.tensor([t for i in indices for t in ids[i]], dtype=torch.long)
    if type_ids is None:
        types = torch.zeros_like(flat)
    else:
        types = torch.tensor([t for i in indices for t in type_ids[i]], dtype=torch.long)
    packing = Packing.from_lengths([len(ids[i]) for i in indices], device=device)
    return flat.to(device), types.to(device), packing


class Engine:
    """Applies ``EngineOptions`` to a model and runs batches under them."""

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()

    def prepare(self, encoder: BertModel, tokenizer: WordPieceTokenizer, device: torch.device,
                name: str = "model") -> BertModel:
        """Put ``encoder`` in eval mode on ``device`` with the options' threads and int8 layers; log what runs.

        int8 (torch backend) quantizes the encoder's linear layers in place, smoothed with activation
        maxima from ``calibration_texts`` (see ``inference/int8.py``); task heads stay in float.
        """
        o = self.options
        if o.threads is not None:
            torch.set_num_threads(o.threads)
        if o.dtype == "fp16" and device.type != "cuda":
            raise ValueError("dtype fp16 needs a GPU; on CPU use bf16")
        if o.dtype == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
            log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 runs but may be slower than fp32")
        encoder.to(device).eval()
        if o.int8 and o.backend == "torch":
            from bertkit.inference.int8 import quantize_encoder

            quantize_encoder(encoder, tokenizer, self, name=name)
        elif o.dtype != "fp32" and o.backend == "torch":
            # Linear weights stored in the low precision: autocast then casts only activations, and a batch-1
            # forward, which mostly streams weights from memory, reads half the bytes (6.8 vs 8.7 ms here).
            # Embeddings, LayerNorms and the residual stream stay fp32.
            for m in encoder.modules():
                if type(m) is nn.Linear:
                    m.to(_TORCH_DTYPES[o.dtype])
        log.info("inference engine for %s: %s", name, o.describe())
        return encoder

    @contextlib.contextmanager
    def running(self, device: torch.device) -> Iterator[None]:
        """inference_mode, plus autocast for bf16 / fp16."""
        dtype = _TORCH_DTYPES.get(self.options.dtype)
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
        return plan_batches(lengths, self.options.max_batch_tokens, cap)

    def batches(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None,
                device: torch.device, max_batch_size: int | None = None
                ) -> Iterator[tuple[np.ndarray, Tensor, Tensor, Packing]]:
        """Yield (input indices, ids (T,), type ids (T,), packing) for each planned batch, longest first."""
        for idx in self.plan([len(x) for x in ids], max_batch_size):
            yield (idx, *pack(ids, type_ids, idx, device))


def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo", encoding="ascii", errors="ignore").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
