"""Quantization for compression: low-bit Linear weights, stored as such, with sizes measured from the files.

Four ways to make the encoder's Linear layers low-bit, one checkpoint format for all of them:

  weight_only.py  group-wise int8 / int4 weights (Q-BERT), and the embedding tables: ``quantize_weights``,
                  ``quantize_embeddings``
  int8.py         static int8 (activation scales fixed at calibration, ``quantize_static``) and dynamic int8
                  (per-token scales, ``inference/int8.py``, ``quantize_dynamic``)
  qat.py          quantization-aware fine-tuning: ``prepare_qat``, train, ``convert_qat``

built on

  packing.py      group-wise quantization grids, int4 and bitmask packing; ``QuantizationError``
  modules.py      the quantized layer types (``WeightOnlyLinear``, ``QuantizedEmbedding``, ``StaticInt8Linear``,
                  ``FakeQuantLinear``)
  swap.py         which layers a step takes, swapping modules in place, ``dequantize_model``

and stored and measured by

  checkpoint.py   ``save_compressed`` / ``load_compressed``: the compressed checkpoint (sparse tensors as bitmask +
                  nonzeros)
  size.py         ``size_report``: bytes per tensor kind, from the safetensors header
"""

from bertkit.compress.quantize.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    SPARSE_THRESHOLD,
    load_compressed,
    save_compressed,
)
from bertkit.compress.quantize.int8 import quantize_dynamic, quantize_static
from bertkit.compress.quantize.modules import (
    QUANTIZED,
    STATIC_ALPHA,
    FakeQuantLinear,
    QuantizedEmbedding,
    StaticInt8Linear,
    WeightOnlyLinear,
    describe_layer,
)
from bertkit.compress.quantize.packing import (
    BITS,
    QuantizationError,
    dequantize_groups,
    pack_bits,
    pack_int4,
    qmax,
    quantize_groups,
    unpack_bits,
    unpack_int4,
)
from bertkit.compress.quantize.qat import convert_qat, prepare_qat
from bertkit.compress.quantize.size import KINDS, size_report
from bertkit.compress.quantize.swap import DEFAULT_SKIP, dequantize_model
from bertkit.compress.quantize.weight_only import quantize_embeddings, quantize_weights

_QUANTIZED = QUANTIZED  # the name before the split (tests/compress/test_pipeline.py reads it)

__all__ = ["BITS", "DEFAULT_SKIP", "FORMAT", "FORMAT_VERSION", "KINDS", "QUANTIZED", "SPARSE_THRESHOLD", "STATIC_ALPHA",
           "FakeQuantLinear", "QuantizationError", "QuantizedEmbedding", "StaticInt8Linear", "WeightOnlyLinear",
           "convert_qat", "dequantize_groups", "dequantize_model", "describe_layer", "load_compressed", "pack_bits",
           "pack_int4", "prepare_qat", "qmax", "quantize_dynamic", "quantize_embeddings", "quantize_groups",
           "quantize_static", "quantize_weights", "save_compressed", "size_report", "unpack_bits", "unpack_int4"]
