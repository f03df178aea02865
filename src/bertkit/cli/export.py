"""``bertkit export onnx MODEL --output DIR [--int8] [--opset 18]``: a model directory with an ONNX graph."""

from __future__ import annotations

import argparse
import json

from bertkit.utils.output_paths import check_output_dir

FORMATS = ("onnx",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for another runtime (onnx: onnxruntime)")
    p.add_argument("format", choices=FORMATS, help="export format")
    p.add_argument("model", nargs="?", default=None,
                   help="built-in name or local HF directory, encoder or task model (default all-MiniLM-L6-v2)")
    p.add_argument("--output", "-o", required=True,
                   help="directory to write: model.onnx plus the model's config, tokenizer and weights")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 weights)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18, what torch writes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.output)  # fail before any work, naming the path
    # Imported here: onnx, onnxruntime and the exporter are slow to import for every other command.
    from bertkit.inference.onnx import META_FILE, export_onnx

    out = export_onnx(args.model, args.output, int8=args.int8, opset=args.opset)
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    line = (f"exported {meta['kind']} to {out}: model.onnx (opset {meta['opset']}, {meta['path']} path, "
            f"outputs {', '.join(meta['outputs'])}), max |onnxruntime - torch| {meta['parity_max_abs_diff']:.1e}")
    if meta["int8"]:
        line += (f"; model.int8.onnx, mean-pooled cosine vs fp32 {meta['int8']['cosine_mean']:.4f} "
                 f"(worst {meta['int8']['cosine_min']:.4f})")
    print(line)
    return 0
