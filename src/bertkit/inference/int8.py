"""int8 linear layers for an encoder: outlier-aware scales, smoothing calibrated on texts, cached.

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
  range from activations into weights; needs activation maxima from calibration texts
  (``inference/calibrate.py``). ``quantize_encoder`` smooths the layers fed by a LayerNorm (``Wqkv``,
  ``mlp_in``: ``SMOOTHED``), as the paper does; the factor is applied to ``x`` at run time (one multiply),
  because in post-norm BERT the LayerNorm output is also the residual stream and cannot absorb it;
- layers named in ``keep`` stay in floating point (docs/benchmarks.md, "int8 variants": which ones measured
  worth keeping).

The layer itself, ``Int8Linear``, and its two kernels live in ``inference/cpu.py`` (which chooses the kernel
per CPU), and are importable from here:

- ``int_mm``: ``torch._int_mm`` on (tokens, in) int8 activations, each row scaled by its own max; fast
  where VNNI / AMX are (33x slower than fp32 on an AVX2-only CPU).
- ``fbgemm``: ``torch.ops.quantized.linear_dynamic`` on weights pre-packed once. It quantizes its input
  with one (asymmetric, 8-bit) scale per tensor, so each token is first divided by its own max and the
  output multiplied back: ``y = max|x_t| * W (x_t / max|x_t|) + b``, which keeps the per-token scale.

Measured on all-MiniLM-L6-v2 (docs/benchmarks.md, "int8 variants"): worst cosine to fp32 0.997 with either kernel.
Calibration maxima are cached per model (``<cache dir>/int8/<hash of the weights and texts>.safetensors``),
so a second load skips the calibration pass. Calibration takes batches, not an engine: the caller batches the
texts (``Engine.text_batches``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.inference.calibrate import CALIBRATION_FILE, activation_maxima, calibrate, calibration_texts
from bertkit.inference.cpu import QMAX, Int8Linear, default_kernel, int_mm, weight_qmax
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.utils.runtime import cache_dir

log = logging.getLogger("bertkit")

# re-exported: the int8 layer and the calibrator live in cpu.py and calibrate.py
__all__ = ["CALIBRATION_FILE", "DEFAULT_ALPHA", "QMAX", "SMOOTHED", "Batch", "Int8Linear", "activation_maxima",
           "calibrate", "calibration_key", "calibration_texts", "default_kernel", "int_mm", "linear_names",
           "load_cached_maxima", "quantize_encoder", "quantize_linears", "restore_linears", "save_cached_maxima",
           "smoothing_factors", "smoothing_maxima", "weight_qmax", "weights_hash"]

# one calibration batch, as Engine.batches yields it: (input indices, ids (T,), type ids (T,), packing)
Batch = tuple[np.ndarray, Tensor, Tensor, Packing]


def linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


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


# Measured on all-MiniLM-L6-v2 (docs/benchmarks.md "int8 variants", `benchmarks/inference_engine.py
# --int8-ablation`): smoothing the layers fed by a LayerNorm (where BERT's outlier channels live, as in SmoothQuant)
# at alpha 0.5 raised the worst-case cosine to fp32 from 0.988 to 0.997; smoothing attn_out and mlp_out too made it
# worse (0.994); keeping mlp_out in float added 0.002 at a 17% speed cost, so by default every linear layer is int8.
DEFAULT_ALPHA = 0.5
SMOOTHED = ("Wqkv", "mlp_in")


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
def smoothing_maxima(encoder: BertModel, batches: Iterable[Batch], key: str | None = None,
                     also: Callable[[Tensor, Packing], None] | None = None) -> dict[str, Tensor]:
    """Activation maxima (in,) of the encoder's LayerNorm-fed layers (``SMOOTHED``) over ``batches`` of the
    calibration texts (``Engine.text_batches``): from the cache under ``key`` when it is there (``batches`` is
    then never read), else measured (and cached). ``also(hidden (total_tokens, hidden), packing)`` sees each
    batch's output (then nothing is read from the cache: the caller wants the pass)."""
    if key is not None and also is None and (cached := load_cached_maxima(key)) is not None:
        log.info("int8: calibration maxima from the cache (%s)", _calibration_file(key))
        return cached

    def forward(batch: Batch) -> None:
        _, flat, types, packing = batch
        h = encoder.forward_packed(flat, packing, types)
        if also is not None:
            also(h, packing)

    names = [n for n in linear_names(encoder) if n.rsplit(".", 1)[-1] in SMOOTHED]
    act_max = activation_maxima(encoder, names, batches, forward)
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
def quantize_encoder(encoder: BertModel, batches: Iterable[Batch] = (), key: str | None = None,
                     keep: Iterable[str] = (), alpha: float = DEFAULT_ALPHA, name: str = "model",
                     kernel: str | None = None, act_max: dict[str, Tensor] | None = None) -> list[str]:
    """Make the encoder's linear layers int8 on ``kernel``, smoothed with ``act_max``, or with the maxima
    ``smoothing_maxima`` measures over ``batches`` of calibration texts (cached under ``key``, e.g.
    ``calibration_key(weights_hash(encoder), texts)``; None: not cached)."""
    if act_max is None:
        act_max = smoothing_maxima(encoder, batches, key)
    return quantize_linears(encoder, keep, act_max, alpha, log_name=name, kernel=kernel)
