"""int8 linear layers for inference: int8 GEMMs with outlier-aware scales, on the kernel this CPU runs fastest.

Naive int8 (one scale per activation tensor, as ``torch.ao`` dynamic quantization and onnxruntime's
``quantize_dynamic`` do) breaks BERT-family encoders: a few hidden dimensions carry activations 10-100x
larger than the rest ("Quantizable Transformers", Bondarenko et al. 2023), so one tensor-wide scale
rounds every other dimension to a handful of levels. Here:

- **weights**: one scale per output channel (row), symmetric, stored as int8 (7 bits where the kernel
  would saturate 8, see ``inference/cpu.py``);
- **activations**: one scale per token (row of ``x``), computed on the fly, so a token's scale follows
  its own largest value and not the batch's;
- **smoothing** (SmoothQuant, Xiao et al. 2023): per input channel ``j`` the activation is divided and
  the weight column multiplied by ``s_j = max|x_j|^a / max|W_j|^(1-a)``, moving the outlier dimensions'
  range from activations into weights; needs activation maxima from calibration texts (``calibrate``).
  ``quantize_encoder`` smooths the layers fed by a LayerNorm (``Wqkv``, ``mlp_in``: ``SMOOTHED``), as the
  paper does; the factor is applied to ``x`` at run time (one multiply), because in post-norm BERT the
  LayerNorm output is also the residual stream and cannot absorb it;
- layers named in ``keep`` stay in floating point (see README for which ones measured worth keeping).

Two kernels (chosen per CPU by ``inference/cpu.py``), one recipe:

- ``int_mm``: ``torch._int_mm`` on (tokens, in) int8 activations, each row scaled by its own max; fast
  where VNNI / AMX are (33x slower than fp32 on an AVX2-only CPU).
- ``fbgemm``: ``torch.ops.quantized.linear_dynamic`` on weights pre-packed once. It quantizes its input
  with one (asymmetric, 8-bit) scale per tensor, so each token is first divided by its own max and the
  output multiplied back: ``y = max|x_t| * W (x_t / max|x_t|) + b``, which keeps the per-token scale.

Measured on all-MiniLM-L6-v2 (README "Serving"): worst cosine to fp32 0.997 with either kernel.
Calibration maxima are cached per model (``<cache dir>/int8/<hash of the weights and texts>.safetensors``),
so a second load skips the calibration pass.

``Int8Linear.forward``: x (..., in) float -> (..., out) float.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from bertkit.inference import cpu
from bertkit.utils.runtime import cache_dir

if TYPE_CHECKING:
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.inference.engine import Engine
    from bertkit.model.bert import BertModel

log = logging.getLogger("bertkit")

QMAX = 127.0  # activations (int_mm: symmetric int8 per token)


def default_kernel() -> str:
    return cpu.kernels().int8


def weight_qmax(kernel: str) -> int:
    """Largest |weight| level for ``kernel`` on this CPU: 63 for fbgemm without VNNI (vpmaddubsw saturates
    at 8 bits), else 127."""
    return 127 if kernel == "int_mm" or cpu.detect().vnni else 63


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
        scale = w.abs().amax(dim=1).clamp_min(1e-8) / qmax  # (out,)
        q = torch.round(w / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        # _int_mm takes (M, K) @ (K, N); keep the weight as the transpose of a contiguous (out, in) block.
        self._init(q.t().contiguous(), scale / QMAX, bias, inv_smooth, kernel)

    def _init(self, weight_t: Tensor, scale: Tensor, bias: Tensor | None, inv_smooth: Tensor | None,
              kernel: str) -> None:
        if kernel not in cpu.INT8_KERNELS:
            raise ValueError(f"int8 kernel must be one of {', '.join(cpu.INT8_KERNELS)}, got {kernel!r}")
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
            step = w.abs().amax(dim=1).clamp_min(1e-8) / qmax
            self.weight_t = torch.round(w / step[:, None]).clamp_(-qmax, qmax).to(torch.int8).t().contiguous()
            self.scale = step / QMAX
        with _quantized_engine("fbgemm"):
            qw = torch._make_per_channel_quantized_tensor(
                self.weight_t.t().contiguous(), (self.scale * QMAX).double(),
                torch.zeros(self.out_features, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)

    @classmethod
    def from_quantized(cls, weight_t: Tensor, scale: Tensor, bias: Tensor | None = None,
                       inv_smooth: Tensor | None = None, kernel: str | None = None) -> Int8Linear:
        """An Int8Linear from the tensors another one holds (a saved checkpoint): weight_t (in, out) int8,
        scale (out,) with the activations' 1/127 folded in, as ``__init__`` makes it; bias (out,); inv_smooth (in,)."""
        in_f, out_f = weight_t.shape
        if weight_t.dtype != torch.int8:
            raise ValueError(f"weight_t must be int8, got {weight_t.dtype}")
        for name, t, n in (("scale", scale, out_f), ("bias", bias, out_f), ("inv_smooth", inv_smooth, in_f)):
            if t is not None and tuple(t.shape) != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
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


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32. torch's kernel wants M > 16 on some builds: pad tiny M."""
    m = a.shape[0]
    if m > 16:
        return torch._int_mm(a, b)
    padded = torch.zeros(17, a.shape[1], dtype=torch.int8, device=a.device)
    padded[:m] = a
    return torch._int_mm(padded, b)[:m]


_int_mm = int_mm  # the old name, still imported by compress/quantize.py


def linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def calibrate(module: nn.Module, run: Callable[[], object], names: Iterable[str]) -> dict[str, Tensor]:
    """Per-input-channel max |activation| (in,) of each named linear layer over ``run()`` (which feeds the
    model calibration batches)."""
    stats: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        lin = module.get_submodule(name)

        def hook(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a

        hooks.append(lin.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return stats


def smoothing_factors(act_max: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's s_j = max|x_j|^alpha / max|W_j|^(1-alpha): act_max (in,), weight (out, in) -> (in,)."""
    w_max = weight.detach().abs().amax(dim=0).float().clamp_min(1e-5)
    return (act_max.clamp_min(1e-5) ** alpha / w_max ** (1 - alpha)).clamp_min(1e-5)


@torch.no_grad()
def quantize_linears(module: nn.Module, keep: Iterable[str] = (), act_max: dict[str, Tensor] | None = None,
                     alpha: float = 0.5, log_name: str = "model", kernel: str | None = None) -> list[str]:
    """Replace every ``nn.Linear`` of ``module`` (except names ending with an entry of ``keep``) by an
    ``Int8Linear``, smoothed where ``act_max`` has the layer's calibration maxima. Returns the names replaced.
    kernel: one of ``cpu.INT8_KERNELS`` (default: this CPU's, see ``inference/cpu.py``)."""
    keep = tuple(keep)
    kernel = kernel or default_kernel()
    done = []
    for name in linear_names(module):
        if keep and any(name == k or name.endswith("." + k) for k in keep):
            continue
        lin = module.get_submodule(name)
        if lin.in_features % 8 or lin.out_features % 8:
            continue  # int8 GEMM kernels want multiples of 8; tiny heads stay in floating point
        smooth = None
        if act_max is not None and name in act_max:
            smooth = smoothing_factors(act_max[name], lin.weight, alpha)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Int8Linear(lin, smooth, kernel))
        done.append(name)
    kept = f"; kept in float: {', '.join(keep)}" if keep else ""
    log.info("int8: %d linear layers of %s quantized (per-channel %d-bit weights, per-token activations%s, "
             "kernel %s)%s", len(done), log_name, weight_qmax(kernel).bit_length() + 1, ", smoothed" if act_max else "",
             kernel, kept)
    return done


CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")
# Measured on all-MiniLM-L6-v2 (README "Serving", `benchmarks/inference_engine.py --int8-ablation`): smoothing
# the layers fed by a LayerNorm (where BERT's outlier channels live, as in SmoothQuant) at alpha 0.5 raised the
# worst-case cosine to fp32 from 0.988 to 0.997; smoothing attn_out and mlp_out too made it worse (0.994);
# keeping mlp_out in float added 0.002 at a 17% speed cost, so by default every linear layer is int8.
DEFAULT_ALPHA = 0.5
SMOOTHED = ("Wqkv", "mlp_in")


def calibration_texts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Texts whose activation maxima set the smoothing factors: ``path`` (one per line) or the built-in
    set of 62 mixed-domain English sentences."""
    p = Path(path) if path is not None else CALIBRATION_FILE
    texts = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise ValueError(f"{p}: no calibration texts (one per line)")
    return texts


def weights_hash(module: nn.Module, *extra: str) -> str:
    """sha256 over every parameter and buffer of ``module`` (names, shapes, dtypes, bytes) and ``extra``
    strings: a cache key that changes whenever the weights do (~60 ms for MiniLM's 90 MB with SHA-NI)."""
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.device.type != "cpu":
            t = t.cpu()
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()


def _calibration_file(key: str) -> Path:
    return cache_dir() / "int8" / f"{key[:32]}.safetensors"


def load_cached_maxima(key: str) -> dict[str, Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _calibration_file(key)
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        log.warning("int8: ignoring unreadable calibration cache %s (%s)", path, e)
        return None


def save_cached_maxima(key: str, act_max: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    from bertkit.utils.atomic import atomic_path

    path = _calibration_file(key)
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in act_max.items()}, str(tmp))
    except OSError as e:  # a read-only cache folder costs a calibration pass next time, nothing more
        log.debug("int8: could not cache calibration maxima in %s (%s)", path, e)


@torch.no_grad()
def smoothing_maxima(encoder: BertModel, tokenizer: WordPieceTokenizer, engine: Engine,
                     texts: list[str] | None = None, key: str | None = None,
                     also: Callable[[Tensor, object], None] | None = None) -> dict[str, Tensor]:
    """Activation maxima (in,) of the encoder's LayerNorm-fed layers (``SMOOTHED``) over ``texts`` (default:
    the built-in set): from the cache under ``key`` when it is there, else measured (and cached).
    ``also(hidden (total_tokens, hidden), packing)`` sees each calibration batch's output (then nothing is
    read from the cache: the caller wants the pass)."""
    if key is not None and also is None and (cached := load_cached_maxima(key)) is not None:
        log.info("int8: calibration maxima from the cache (%s)", _calibration_file(key))
        return cached
    ids = tokenizer.encode(texts or calibration_texts(), max_length=encoder.config.max_tokens).ids
    device = next(encoder.parameters()).device

    def feed() -> None:
        for _, flat, types, packing in engine.batches(ids, None, device):
            h = encoder.forward_packed(flat, packing, types)
            if also is not None:
                also(h, packing)

    names = [n for n in linear_names(encoder) if n.rsplit(".", 1)[-1] in SMOOTHED]
    act_max = calibrate(encoder, feed, names)
    if key is not None:
        save_cached_maxima(key, act_max)
    return act_max


def calibration_key(weights: str, texts: list[str] | None = None) -> str:
    """Cache key of ``smoothing_maxima``: the weights (``weights_hash``), the texts and the layers smoothed."""
    parts = [weights, "\n".join(texts or calibration_texts()), ",".join(SMOOTHED), "int8-cal-v1"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def restore_linears(module: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put back the layers ``originals`` maps by name (undoes ``quantize_linears``)."""
    for name, lin in originals.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, lin)


@torch.no_grad()
def quantize_encoder(encoder: BertModel, tokenizer: WordPieceTokenizer, engine: Engine,
                     texts: list[str] | None = None, keep: Iterable[str] = (), alpha: float = DEFAULT_ALPHA,
                     name: str = "model", kernel: str | None = None, act_max: dict[str, Tensor] | None = None,
                     cache: bool = True) -> list[str]:
    """Calibrate on ``texts`` (default: the built-in set; maxima cached by weights hash unless ``cache`` is
    False, or given as ``act_max``), then make the encoder's linear layers int8 on ``kernel``."""
    if act_max is None:
        key = calibration_key(weights_hash(encoder), texts) if cache else None
        act_max = smoothing_maxima(encoder, tokenizer, engine, texts, key)
    return quantize_linears(encoder, keep, act_max, alpha, log_name=name, kernel=kernel)
