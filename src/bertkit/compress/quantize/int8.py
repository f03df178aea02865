"""int8 with activations: static scales fixed at calibration, or dynamic per-token scales.

- **static int8**: ``quantize_static`` fixes each layer's activation scale from calibration batches
  (SmoothQuant per-channel smoothing at alpha 0.8, then one per-tensor scale: measured, see ``STATIC_ALPHA``);
  ``StaticInt8Linear`` runs the same int8 x int8 -> int32 GEMM as ``inference/cpu.Int8Linear`` without the
  per-token max at run time. On MiniLM it is less accurate than dynamic int8 and no faster.
- **dynamic int8**: ``inference/int8.py`` (per-token activation scales), exposed here as ``quantize_dynamic``.

Both calibrate with the one calibrator of ``inference/calibrate.py``, on the built-in calibration texts in the
model's own engine batches (``calibration_batches``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from bertkit.compress.quantize.modules import STATIC_ALPHA, StaticInt8Linear
from bertkit.compress.quantize.packing import QuantizationError
from bertkit.compress.quantize.swap import encoder_of, float_linears, refuse_quantized, replace_module
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import Encoder
from bertkit.inference.calibrate import activation_maxima, calibrate, calibration_texts
from bertkit.inference.engine import Engine
from bertkit.inference.int8 import DEFAULT_ALPHA, Batch, calibration_key, quantize_encoder, weights_hash
from bertkit.model.bert import BertModel
from bertkit.task_model import TaskModel

log = logging.getLogger("bertkit")


def calibration_batches(encoder: BertModel, tokenizer: Tokenizer, engine: Engine, texts: list[str]
                        ) -> Iterator[Batch]:
    """``texts`` in ``engine``'s batches, on the encoder's device, at its longest length."""
    device = next(encoder.parameters()).device
    return engine.text_batches(tokenizer, texts, encoder.config.max_tokens, device)


def run_batch(model: TaskModel | Encoder) -> Callable[[Batch], None]:
    """What static calibration runs on each batch: the encoder, its pooler, and a TaskModel's classifier."""
    encoder = encoder_of(model)

    def forward(batch: Batch) -> None:
        _, flat, types, packing = batch
        if isinstance(model, TaskModel):
            model.head(flat, packing, types)
        else:
            encoder.pool(encoder.forward_packed(flat, packing, types), packing)

    return forward


@torch.no_grad()
def quantize_static(model: Any, calibration_batches_fn: Callable[[], object] | None = None, *,
                    alpha: float | None = STATIC_ALPHA, keep: Iterable[str] = ()) -> list[str]:
    """Make the encoder's Linears ``StaticInt8Linear`` with activation scales fixed from calibration, in place.

    calibration_batches_fn: runs the model on calibration batches, once, while each layer's per-input-channel
    max |x| is recorded; default, for a TaskModel / Encoder, its engine's batches of the built-in calibration
    texts (``calibration_batches``, run by ``run_batch``). A layer calibration never reaches stays float (logged).
    alpha: SmoothQuant strength (per-channel smoothing, then one per-tensor scale); None: per-tensor only.
    The default 0.8 measured best (see ``STATIC_ALPHA``), and still below dynamic int8 on MiniLM: activations
    beyond the calibrated range saturate, which per-token scales avoid. Prefer ``quantize_dynamic`` unless
    the fixed scales are the point (e.g. an int8 runtime without dynamic quantization).
    keep: layer names left in float. Layers whose sizes are not multiples of 8 stay float (int8 GEMM kernels).
    """
    encoder = encoder_of(model)
    refuse_quantized(encoder, "quantize_static")
    if calibration_batches_fn is None and not isinstance(model, TaskModel | Encoder):
        raise QuantizationError("quantize_static on a bare module needs calibration_batches_fn (a function "
                                "that runs the model on calibration batches)")
    names = [n for n in float_linears(encoder, keep)
             if not (encoder.get_submodule(n).in_features % 8 or encoder.get_submodule(n).out_features % 8)]
    was_training = encoder.training
    encoder.eval()
    if calibration_batches_fn is None:
        batches = calibration_batches(encoder, model.tokenizer, model.engine, calibration_texts())
        act_max = activation_maxima(encoder, names, batches, run_batch(model))
    else:
        act_max = calibrate(encoder, calibration_batches_fn, names)
    encoder.train(was_training)
    missed = [n for n in names if n not in act_max]
    if missed:
        log.warning("static int8: calibration never ran %s; left in float", ", ".join(missed))
    done = [n for n in names if n in act_max]
    for name in done:
        replace_module(encoder, name, StaticInt8Linear.from_linear(encoder.get_submodule(name), act_max[name], alpha))
    log.info("static int8: %d linear layers quantized (per-channel weights, per-tensor activation scales%s)",
             len(done), f", smoothed alpha {alpha}" if alpha is not None else "")
    return done


def quantize_dynamic(model: Any, tokenizer: Tokenizer | None = None, *, texts: list[str] | None = None,
                     keep: Iterable[str] = (), alpha: float = DEFAULT_ALPHA) -> list[str]:
    """Dynamic int8 (``inference/int8.quantize_encoder``: per-token activation scales, SmoothQuant smoothing
    calibrated on ``texts``, default the built-in set; maxima cached by weights hash), in place. ``tokenizer``
    defaults to a TaskModel's / Encoder's own."""
    encoder = encoder_of(model)
    refuse_quantized(encoder, "quantize_dynamic")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise QuantizationError("quantize_dynamic on a bare module needs the tokenizer (for calibration texts)")
    texts = texts or calibration_texts()
    batches = calibration_batches(encoder, tokenizer, getattr(model, "engine", None) or Engine(), texts)
    return quantize_encoder(encoder, batches, calibration_key(weights_hash(encoder), texts), keep, alpha)
