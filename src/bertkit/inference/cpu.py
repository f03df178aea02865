"""What this CPU offers, and which kernel runs each precision on it.

The engine was first tuned on a CPU with AVX-512 VNNI and BF16. On one with AVX2 only (most laptops,
many cloud VMs) the same choices are slow: ``torch._int_mm`` falls back to a generic loop (33x slower
than the fp32 GEMM, measured on an AMD EPYC Zen 3) and bf16 matmuls are emulated (8x slower). So the
kernels are chosen by capability:

- **int8**: ``int_mm`` (``torch._int_mm``: int8 x int8 -> int32, per-token activation scales) only where
  VNNI or AMX make it fast; elsewhere ``fbgemm`` (``torch.ops.quantized.linear_dynamic`` on pre-packed,
  per-channel weights; see ``inference/int8.py``). Where both are candidates (VNNI/AMX and fbgemm),
  a short measurement decides.
- **bf16** runs natively only with AVX512-BF16 or AMX; elsewhere it is emulated and never chosen by
  ``dtype="auto"``.
- **auto order**: the precisions fastest first. Settled by capability on a CPU without VNNI and native
  bf16 (int8 through fbgemm, then fp32); measured otherwise.

A measured decision is cached per machine, in ``<cache dir>/cpu_kernels.json`` keyed by CPU model,
features, torch's capability and torch's version, and every decision is logged once per process.

fbgemm's AVX2 / AVX-512 (non-VNNI) int8 kernels multiply uint8 activations by int8 weights with
``vpmaddubsw``, which adds pairs of products into int16 with saturation: 2 x 255 x 127 overflows.
Weights are therefore stored in 7 bits (|q| <= 63: 2 x 255 x 63 = 32,130 fits) there; with VNNI
(``vpdpbusd`` accumulates in int32) they keep all 8 bits.

The int8 layer both kernels run, ``Int8Linear``, lives here too: measuring the kernels needs it, and its default
kernel and weight range are this CPU's. ``inference/int8.py`` builds on it (smoothing, calibration, swapping an
encoder's layers); this module imports nothing else of ``bertkit.inference``.

``Int8Linear.forward``: x (..., in) float -> (..., out) float.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import cache_dir

log = logging.getLogger("bertkit")

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
INT8_KERNELS = ("int_mm", "fbgemm")
PRECISIONS = ("int8", "bf16", "fp32")
CACHE_FILE = "cpu_kernels.json"
CACHE_VERSION = 1
QMAX = 127.0  # activations (int_mm: symmetric int8 per token)


@dataclass(frozen=True)
class CpuInfo:
    """The facts the kernel choice depends on. ``flags``: the subset of ``FEATURES`` this CPU reports."""

    model: str
    flags: frozenset[str]
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): "DEFAULT", "AVX2", "AVX512", ...
    torch_version: str
    fbgemm: bool  # torch's fbgemm quantized engine is built in (x86 builds)

    @property
    def vnni(self) -> bool:
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    @property
    def cpu_class(self) -> str:
        """A short name for the class of CPU results are filed under: avx2, avx2_vnni, avx512, avx512_vnni,
        avx512_bf16_vnni, amx, or generic."""
        f = self.flags
        if f & {"amx_int8", "amx_bf16"}:
            return "amx"
        if "avx512f" in f:
            if self.native_bf16 and "avx512_vnni" in f:
                return "avx512_bf16_vnni"
            return "avx512_vnni" if "avx512_vnni" in f else "avx512"
        if "avx2" in f:
            return "avx2_vnni" if "avx_vnni" in f else "avx2"
        return "generic"

    @property
    def key(self) -> str:
        """What a cached decision is valid for."""
        return f"{self.model} | {','.join(sorted(self.flags))} | torch {self.torch_version} {self.torch_capability}"


@dataclass(frozen=True)
class KernelChoice:
    """Which kernel runs each precision here, and the precisions fastest first (``order``)."""

    int8: str  # one of INT8_KERNELS
    int8_weight_bits: int  # 8, or 7 where fbgemm multiplies with vpmaddubsw (see the module docstring)
    bf16_native: bool
    order: tuple[str, ...]  # PRECISIONS that dtype="auto" may pick, fastest first; always ends with fp32
    source: str  # "capability", "measured" or "cache"
    timings_us: dict[str, float] = field(default_factory=dict)

    @property
    def int8_qmax(self) -> int:
        return (1 << (self.int8_weight_bits - 1)) - 1

    def describe(self) -> str:
        bits = "" if self.int8_weight_bits == 8 else f", {self.int8_weight_bits}-bit weights"
        return (f"int8 kernel {self.int8}{bits}; bf16 {'native' if self.bf16_native else 'emulated (never auto)'}; "
                f"auto order {' > '.join(self.order)} ({self.source})")


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return f.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, features among ``FEATURES``) from /proc/cpuinfo text (its first processor)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split()) & set(FEATURES)
    return model, flags


@functools.cache
def detect() -> CpuInfo:
    """This machine's CpuInfo. Off Linux the features come from torch's capability string alone."""
    model, flags = parse_cpuinfo(_cpuinfo_text())
    cap = torch.backends.cpu.get_cpu_capability()
    if not flags and cap.startswith("AVX"):
        flags = frozenset({"avx2"} | ({"avx512f"} if cap.startswith("AVX512") else set()))
    return CpuInfo(model=model or platform.processor() or platform.machine(), flags=flags, torch_capability=cap,
                   torch_version=torch.__version__, fbgemm="fbgemm" in torch.backends.quantized.supported_engines)


def by_capability(info: CpuInfo) -> KernelChoice | None:
    """The choice where capability alone settles it, else None (then ``measure`` decides)."""
    if not info.fbgemm:  # no int8 alternative to torch._int_mm in this build
        if info.vnni or not info.flags:
            return None
        return KernelChoice("int_mm", 8, info.native_bf16, ("bf16", "fp32") if info.native_bf16 else ("fp32",),
                            "capability")
    if info.vnni or info.native_bf16:
        return None
    # AVX2 / AVX-512 without VNNI: _int_mm has no fast kernel here, bf16 is emulated; fbgemm's int8 GEMM
    # (vpmaddubsw) beats the fp32 one 1.5-2.7x on MiniLM's layer shapes (docs/benchmarks.md, "Inference engine").
    return KernelChoice("fbgemm", 7, False, ("int8", "fp32"), "capability")


def _best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def measure(info: CpuInfo, tokens: int = 256, hidden: int = 384, ffn: int = 1536) -> KernelChoice:
    """Time one MiniLM-sized layer's GEMMs (``tokens`` x hidden -> 3 hidden, hidden, ffn, and ffn -> hidden)
    in fp32, bf16 (where native) and int8 with each available kernel; the fastest int8 kernel wins, and the
    precisions are ordered by time. About 0.1-0.3 s."""
    torch.manual_seed(0)
    shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, ffn), (ffn, hidden)]
    layers = [torch.nn.Linear(i, o) for i, o in shapes]
    xs = [torch.randn(tokens, i) for i, _ in shapes]
    times: dict[str, float] = {}
    with torch.inference_mode():
        times["fp32"] = _best_of(lambda: [lin(x) for lin, x in zip(layers, xs, strict=True)])
        if info.native_bf16:
            low = [torch.nn.Linear(i, o).to(torch.bfloat16) for i, o in shapes]
            xb = [x.bfloat16() for x in xs]
            times["bf16"] = _best_of(lambda: [lin(x) for lin, x in zip(low, xb, strict=True)])
        kernels = [k for k in INT8_KERNELS if k != "fbgemm" or info.fbgemm]
        for k in kernels:
            bits = 8 if (k == "int_mm" or info.vnni) else 7
            q = [Int8Linear(lin, kernel=k, qmax=(1 << (bits - 1)) - 1) for lin in layers]
            times[f"int8:{k}"] = _best_of(lambda q=q: [lin(x) for lin, x in zip(q, xs, strict=True)])
    kernel = min(kernels, key=lambda k: times[f"int8:{k}"])
    times["int8"] = times[f"int8:{kernel}"]
    order = tuple(sorted((p for p in PRECISIONS if p in times), key=lambda p: times[p]))
    order = order[:order.index("fp32") + 1]  # nothing slower than fp32 is ever chosen
    bits = 8 if (kernel == "int_mm" or info.vnni) else 7
    return KernelChoice(kernel, bits, info.native_bf16, order, "measured", {k: round(v, 1) for k, v in times.items()})


def _read_cache(info: CpuInfo) -> KernelChoice | None:
    path = cache_dir() / CACHE_FILE
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(info.key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    try:
        return KernelChoice(entry["int8"], int(entry["int8_weight_bits"]), bool(entry["bf16_native"]),
                            tuple(entry["order"]), "cache", dict(entry.get("timings_us") or {}))
    except (KeyError, TypeError, ValueError):
        return None


def _write_cache(info: CpuInfo, choice: KernelChoice) -> None:
    path = cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):  # unreadable: written over
        data = {}
    if not isinstance(data, dict):
        data = {}
    try:
        entry = {k: v for k, v in asdict(choice).items() if k != "source"}
        data[info.key] = {"version": CACHE_VERSION, **entry, "order": list(choice.order)}
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except (OSError, ValueError) as e:  # a read-only home must not stop inference
        log.debug("cpu: could not cache the kernel choice in %s (%s)", path, e)


def choose(info: CpuInfo, measure_fn: Callable[[CpuInfo], KernelChoice] = measure,
           use_cache: bool = True) -> KernelChoice:
    """The kernel choice for ``info``: by capability, else from the cache, else measured (and cached)."""
    settled = by_capability(info)
    if settled is not None:
        return settled
    if use_cache and (cached := _read_cache(info)) is not None:
        return cached
    choice = measure_fn(info)
    if use_cache:
        _write_cache(info, choice)
    return choice


@functools.cache
def kernels() -> KernelChoice:
    """This machine's choice (computed once per process, logged once)."""
    info = detect()
    choice = choose(info)
    log.info("cpu: %s (%s; torch %s %s): %s", info.model or "unknown model", info.cpu_class, info.torch_version,
             info.torch_capability, choice.describe())
    return choice


# ---- the int8 layer both kernels run ---------------------------------------------------------------------------
def default_kernel() -> str:
    return kernels().int8


def weight_qmax(kernel: str) -> int:
    """Largest |weight| level for ``kernel`` on this CPU: 63 for fbgemm without VNNI (vpmaddubsw saturates
    at 8 bits), else 127."""
    return 127 if kernel == "int_mm" or detect().vnni else 63


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """torch's quantized engine set to ``name`` while weights are packed (the packed object keeps its kernel)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; the packed op is not
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            yield
    finally:
        torch.backends.quantized.engine = old


def quantize_rows(w: Tensor, qmax: float) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with one scale per row: w (out, in) float -> q (out, in) int8 in [-qmax, qmax] and
    scale (out,), w ~= q * scale[:, None]."""
    scale = w.abs().amax(dim=1).clamp_min(1e-8) / qmax
    return torch.round(w / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8), scale


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32. torch's kernel wants M > 16 on some builds: pad tiny M."""
    m = a.shape[0]
    if m > 16:
        return torch._int_mm(a, b)
    padded = torch.zeros(17, a.shape[1], dtype=torch.int8, device=a.device)
    padded[:m] = a
    return torch._int_mm(padded, b)[:m]


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per-output-channel scales) and per-token int8 activations.

    Buffers (what a checkpoint stores, the same for every kernel): ``weight_t`` (in, out) int8, ``scale``
    (out,) fp32 with the activations' 1/127 folded in (``y = acc * max|x_t| * scale``), ``bias`` (out,),
    ``inv_smooth`` (in,) or None. The fbgemm kernel also holds the weights pre-packed (not a buffer).
    """

    def __init__(self, linear: nn.Linear, smooth: Tensor | None = None, kernel: str | None = None,
                 qmax: int | None = None) -> None:
        super().__init__()
        kernel = kernel or default_kernel()
        qmax = qmax or weight_qmax(kernel)
        w = linear.weight.detach().float()  # (out, in)
        if smooth is not None:
            smooth = smooth.detach().float().clamp_min(1e-5)
            w = w * smooth[None, :]
            inv_smooth = (1.0 / smooth).contiguous()
        else:
            inv_smooth = None
        q, scale = quantize_rows(w, qmax)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        # _int_mm takes (M, K) @ (K, N); keep the weight as the transpose of a contiguous (out, in) block.
        self._init(q.t().contiguous(), scale / QMAX, bias, inv_smooth, kernel)

    def _init(self, weight_t: Tensor, scale: Tensor, bias: Tensor | None, inv_smooth: Tensor | None,
              kernel: str) -> None:
        if kernel not in INT8_KERNELS:
            raise ValueError(f"int8 kernel must be one of {', '.join(INT8_KERNELS)}, got {kernel!r}")
        self.register_buffer("weight_t", weight_t)  # (in, out) int8
        self.register_buffer("scale", scale.float())  # (out,)
        self.register_buffer("bias", bias)
        if inv_smooth is not None:
            self.register_buffer("inv_smooth", inv_smooth.float())
        else:
            self.inv_smooth = None
        self.in_features, self.out_features = weight_t.shape
        self.kernel = kernel
        self._packed = None
        if kernel == "fbgemm":
            self._pack()

    def _pack(self) -> None:
        qmax = weight_qmax("fbgemm")
        if int(self.weight_t.abs().amax()) > qmax:  # 8-bit weights (saved on a VNNI machine): requantize
            w = self.weight_t.t().float() * (self.scale * QMAX)[:, None]
            q, step = quantize_rows(w, qmax)
            self.weight_t = q.t().contiguous()
            self.scale = step / QMAX
        with _quantized_engine("fbgemm"):
            qw = torch._make_per_channel_quantized_tensor(
                self.weight_t.t().contiguous(), (self.scale * QMAX).double(),
                torch.zeros(self.out_features, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)

    @staticmethod
    def check_tensors(weight_t: Tensor, error: type[Exception] = ValueError,
                      **vectors: tuple[Tensor | None, str]) -> tuple[int, int]:
        """(in, out) of a stored int8 layer: ``weight_t`` (in, out) int8, and each named vector (or None) of the
        length its axis ("in" / "out") says; else ``error`` naming the tensor. Int8Linear and the static int8
        layer of compress/quantize check their tensors with it."""
        in_f, out_f = weight_t.shape
        if weight_t.dtype != torch.int8:
            raise error(f"weight_t must be int8, got {weight_t.dtype}")
        for name, (t, axis) in vectors.items():
            n = in_f if axis == "in" else out_f
            if t is not None and tuple(t.shape) != (n,):
                raise error(f"{name} must have shape ({n},), got {tuple(t.shape)}")
        return in_f, out_f

    @classmethod
    def from_quantized(cls, weight_t: Tensor, scale: Tensor, bias: Tensor | None = None,
                       inv_smooth: Tensor | None = None, kernel: str | None = None) -> Int8Linear:
        """An Int8Linear from the tensors another one holds (a saved checkpoint): weight_t (in, out) int8,
        scale (out,) with the activations' 1/127 folded in, as ``__init__`` makes it; bias (out,); inv_smooth (in,)."""
        cls.check_tensors(weight_t, scale=(scale, "out"), bias=(bias, "out"), inv_smooth=(inv_smooth, "in"))
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init(weight_t, scale, None if bias is None else bias.float(), inv_smooth, kernel or default_kernel())
        return self

    def forward(self, x: Tensor) -> Tensor:
        # Few, large ops: at batch 1 (25 tokens) the GEMM takes 40 us and every extra pass over x or y ~5 us.
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()  # (tokens, in)
        owned = x.dtype != torch.float32  # x2 is a fresh tensor, not the caller's, and may be overwritten
        if self.inv_smooth is not None:
            x2, owned = x2 * self.inv_smooth, True
        # max|x| per row as max(max x, -min x): two vectorized reductions without a temporary (|x| or
        # linalg.vector_norm(inf), which runs 17x slower here).
        amax = torch.maximum(x2.amax(dim=1, keepdim=True), x2.amin(dim=1, keepdim=True).neg_()).clamp_min_(1e-8)
        if self._packed is not None and x2.device.type == "cpu":
            # x2 / amax: every row's max is 1, so fbgemm's one per-tensor scale serves each token as its own.
            u = x2.div_(amax) if owned else x2 / amax
            y = torch.ops.quantized.linear_dynamic(u, self._packed, False)  # (tokens, out) fp32
            y = y.mul_(amax) if self.bias is None else torch.addcmul(self.bias, y, amax, out=y)
        else:
            xq = torch.mul(x2, QMAX / amax).round_().to(torch.int8)
            y = int_mm(xq, self.weight_t).float().mul_(amax)  # (tokens, out): int32 -> float, row scales
            y = y.mul_(self.scale) if self.bias is None else torch.addcmul(self.bias, y, self.scale)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle: the packed weights are rebuilt from the buffers
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.kernel == "fbgemm":
            self._pack()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, smooth={self.inv_smooth is not None}, "
                f"kernel={self.kernel}")
