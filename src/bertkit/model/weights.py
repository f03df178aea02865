"""Loading and saving Hugging Face BERT checkpoints with an explicit, asserted key map.

HF names (``encoder.layer.3.attention.self.query.weight``) map to ours (``layers.3.Wqkv.weight``,
rows 0:hidden) through ``hf_key_map``. Loading is strict: every tensor of our model must be
filled exactly once, every checkpoint tensor must be used, and shapes must match; any exception
is an error that names the tensor. Only HF's constant buffers (``position_ids``) and task-head
tensors next to a ``bert.``-prefixed encoder (``cls.*``, ``classifier.*``) are set aside, and the
latter are returned so task heads can load them.

Config options (``bert.py``) change the key set, not the names: ``use_bias=False`` drops the layers'
Linear biases, rope / alibi drop ``embeddings.position_embeddings.weight``, GLU keeps
``intermediate.dense`` at shape (2 * intermediate, hidden) with rows [gate; up], pre-norm keeps
``attention.output.LayerNorm`` / ``output.LayerNorm`` for the norms before attention / FFN, and
``final_norm`` adds ``encoder.final_norm.{weight,bias}`` (a name of ours; BertModel has none).

Pruned layers (config ``pruned_heads`` / ``intermediate_sizes``) keep the names at smaller shapes, as
transformers 4.x's head pruning saves them: query/key/value (heads * head_dim, hidden), attention.output.dense
(hidden, heads * head_dim), intermediate.dense / output.dense at the layer's own FFN width. Shapes are
checked against the config as for any checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from bertkit.errors import CheckpointError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.utils.atomic import atomic_path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# HF buffers that are not weights: constant, re-created by the model.
_CONSTANT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

# (HF suffix, our suffix, is a LayerNorm) for each layer; q/k/v map into slices of our fused Wqkv.
_LAYER_MAP = [
    ("attention.output.dense", "attn_out", False),
    ("attention.output.LayerNorm", "attn_norm", True),
    ("intermediate.dense", "mlp_in", False),
    ("output.dense", "mlp_out", False),
    ("output.LayerNorm", "mlp_norm", True),
]
_QKV = ("query", "key", "value")


def hf_key_map(cfg: EncoderConfig, pooler: bool) -> dict[str, tuple[str, slice | None]]:
    """HF key -> (our key, row slice of our tensor or None for the whole tensor), for ``cfg``'s options."""
    linear_params = ("weight", "bias") if cfg.use_bias else ("weight",)
    m: dict[str, tuple[str, slice | None]] = {"embeddings.word_embeddings.weight": ("embeddings.word.weight", None)}
    if cfg.position_embedding_type == "absolute":
        m["embeddings.position_embeddings.weight"] = ("embeddings.position.weight", None)
    m["embeddings.token_type_embeddings.weight"] = ("embeddings.token_type.weight", None)
    m["embeddings.LayerNorm.weight"] = ("embeddings.norm.weight", None)
    m["embeddings.LayerNorm.bias"] = ("embeddings.norm.bias", None)
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
        a = len(cfg.layer_heads(i)) * cfg.head_dim  # hidden, unless heads were pruned
        for j, name in enumerate(_QKV):
            rows = slice(j * a, (j + 1) * a)
            for p in linear_params:
                m[f"{hf}attention.self.{name}.{p}"] = (f"{ours}Wqkv.{p}", rows)
        for hf_suffix, our_suffix, is_norm in _LAYER_MAP:
            for p in ("weight", "bias") if is_norm else linear_params:
                m[f"{hf}{hf_suffix}.{p}"] = (f"{ours}{our_suffix}.{p}", None)
    if cfg.final_norm:
        for p in ("weight", "bias"):
            m[f"encoder.final_norm.{p}"] = (f"final_norm.{p}", None)
    if pooler:
        for p in ("weight", "bias"):
            m[f"pooler.dense.{p}"] = (f"pooler.dense.{p}", None)
    return m


def find_weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no weights found; looked for {' or '.join(WEIGHT_FILES)}"
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a safetensors or torch file without executing pickled code."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    except Exception as e:  # weights_only unpickler rejects arbitrary objects with its own error types
        raise CheckpointError(f"{path}: cannot read weights safely ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def normalize_hf_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a checkpoint into (encoder tensors without prefix, task-head tensors).

    Accepts keys with or without the ``bert.`` prefix and TF-era ``gamma``/``beta`` LayerNorm names.
    """
    prefixed = any(k.startswith("bert.") for k in state)
    encoder, heads = {}, {}
    for key, t in state.items():
        k = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if prefixed:
            if k.startswith("bert."):
                encoder[k[len("bert."):]] = t
            else:
                heads[k] = t
        else:
            encoder[k] = t
    return encoder, heads


def has_pooler(encoder_state: dict[str, Tensor]) -> bool:
    return "pooler.dense.weight" in encoder_state


def load_hf_state(model: BertModel, encoder_state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy HF-named tensors into ``model``, strictly. Raises CheckpointError naming each problem."""
    key_map = hf_key_map(model.config, model.pooler is not None)
    ours = model.state_dict()
    filled: dict[str, int] = {k: 0 for k in ours}  # rows filled per tensor
    problems: list[str] = []

    unexpected = [k for k in encoder_state if k not in key_map and k not in _CONSTANT_BUFFERS]
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:10])}"
                        + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [k for k in key_map if k not in encoder_state]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}"
                        + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    with torch.no_grad():
        for hf_key, (our_key, rows) in key_map.items():
            if hf_key not in encoder_state:
                continue
            src = encoder_state[hf_key]
            dst = ours[our_key] if rows is None else ours[our_key][rows]
            if tuple(src.shape) != tuple(dst.shape):
                problems.append(f"tensor '{hf_key}' has shape {tuple(src.shape)}, config expects {tuple(dst.shape)}")
                continue
            dst.copy_(src)
            filled[our_key] += dst.shape[0] if dst.dim() else 1
    if not problems:
        for k, n in filled.items():
            full = ours[k].shape[0] if ours[k].dim() else 1
            assert n == full, f"key map bug: {k} filled {n} of {full} rows"
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(problems))


def hf_state_dict(model: BertModel) -> dict[str, Tensor]:
    """Our parameters under HF BertModel names (contiguous copies, ready for safetensors)."""
    ours = model.state_dict()
    out = {}
    for hf_key, (our_key, rows) in hf_key_map(model.config, model.pooler is not None).items():
        t = ours[our_key] if rows is None else ours[our_key][rows]
        out[hf_key] = t.detach().cpu().contiguous().clone()
    return out


def write_safetensors(state: dict[str, Tensor], directory: str | os.PathLike[str]) -> Path:
    """Write ``directory/model.safetensors`` atomically (temp file, then rename)."""
    path = Path(directory) / "model.safetensors"
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return path


def save_weights(model: BertModel, directory: str | os.PathLike[str]) -> Path:
    return write_safetensors(hf_state_dict(model), directory)


def load_pretrained(directory: str | os.PathLike[str], path: str = "unpadded") -> tuple[BertModel, dict[str, Tensor]]:
    """Build a BertModel from an HF-format directory. Returns (model, task-head tensors)."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {d / 'config.json'})")
    cfg = EncoderConfig.from_json_file(d / "config.json")
    weights = find_weights_file(d)
    encoder_state, heads = normalize_hf_keys(read_state_dict(weights))
    model = BertModel(cfg, add_pooler=has_pooler(encoder_state), path=path)
    load_hf_state(model, encoder_state, source=str(weights))
    return model.eval(), heads
