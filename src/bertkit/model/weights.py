"""Loading and saving Hugging Face checkpoints of every family with an explicit, asserted key map.

HF names (``encoder.layer.3.attention.self.query.weight``, ``layers.3.attn.Wqkv.weight`` ...) map to ours
(``layers.3.Wqkv.weight``, rows 0:hidden) through the family's key table (``model/families/``, ``hf_key_map``).
Loading is strict: every tensor of our model must be filled exactly once, every checkpoint tensor must be used,
and shapes must match; any exception is an error that names the tensor. Only HF's constant buffers
(``position_ids``) and task-head tensors next to a prefixed encoder (``bert.``, ``roberta.``, ``deberta.``,
``model.`` ...) are set aside, and the latter are returned so task heads can load them.

Before a byte of weights is read or a parameter allocated, the config is checked against the shapes in the
weights file's header (``check_config_against_header``): a config.json that disagrees with its weights (say
``num_hidden_layers: 1000000`` or ``vocab_size: 10**10``) is refused by field, in milliseconds, instead of
building a model that fills the machine's memory.

Pruned layers (config ``pruned_heads`` / ``intermediate_sizes``) keep the names at smaller shapes, as
transformers 4.x's head pruning saves them; shapes are checked against the config as for any checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from bertkit.errors import CheckpointError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.families import Family, KeyMap, family_of, read_config
from bertkit.utils.atomic import atomic_path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # sharded checkpoints
# HF buffers that are not weights: constant, re-created by the model.
_CONSTANT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# which config fields shape each of our tensors, for errors that name the field
_SHAPED_BY = {
    "embeddings.word.weight": ("vocab_size", "embedding_size/hidden_size"),
    "embeddings.position.weight": ("max_position_embeddings", "embedding_size/hidden_size"),
    "embeddings.token_type.weight": ("type_vocab_size", "embedding_size/hidden_size"),
    "Wqkv.weight": ("num_attention_heads x head size (x3)", "hidden_size"),
    "mlp_in.weight": ("intermediate_size", "hidden_size"),
    "mlp_out.weight": ("hidden_size", "intermediate_size"),
    "rel.embeddings.weight": ("2 x (position_buckets or max_relative_positions)", "hidden_size"),
    "rel.bucket.weight": ("relative_attention_num_buckets", "num_attention_heads"),
}


def hf_key_map(cfg: EncoderConfig, pooler: bool) -> KeyMap:
    """HF key -> (our key, row slice of our tensor or None for the whole tensor), for ``cfg``'s family and options."""
    return family_of(cfg).encoder_keys(cfg, pooler)


def find_weights_file(directory: Path) -> Path:
    for name in (*WEIGHT_FILES, *INDEX_FILES):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no weights found; looked for {' or '.join(WEIGHT_FILES)}"
    )


def _shards(path: Path) -> list[Path]:
    """The files of a checkpoint: itself, or the shards its ``*.index.json`` names."""
    if not path.name.endswith(".index.json"):
        return [path]
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        files = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a valid checkpoint index ({type(e).__name__}: {e})") from None
    shards = [path.parent / f for f in files]
    for s in shards:
        if not s.is_file():
            raise CheckpointError(f"{path}: names the shard {s.name}, which is missing")
    return shards


def read_header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, reading only the safetensors header (no data); .bin files are memory-mapped."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in _shards(path):
        if shard.suffix == ".safetensors":
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for k in f.keys():
                        shapes[k] = tuple(f.get_slice(k).get_shape())
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{shard}: cannot read weights ({type(e).__name__}: {e})") from None
        else:
            shapes.update({k: tuple(v.shape) for k, v in _read_bin(shard, mmap=True).items()})
    return shapes


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a safetensors or torch file (or a sharded checkpoint's index) without executing pickled code."""
    state: dict[str, Tensor] = {}
    for shard in _shards(path):
        if shard.suffix == ".safetensors":
            try:
                state.update(load_file(str(shard)))
            except (SafetensorError, OSError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"{shard}: cannot read weights ({type(e).__name__}: {e})") from None
        else:
            state.update(_read_bin(shard))
    return state


def _read_bin(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        if mmap:  # an old (non-zip) torch file cannot be memory-mapped: read it whole
            return _read_bin(path, mmap=False)
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    except Exception as e:  # weights_only unpickler rejects arbitrary objects with its own error types
        raise CheckpointError(f"{path}: cannot read weights safely ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def _clean(key: str) -> str:
    # TF-era LayerNorm names
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def split_keys(keys: list[str] | dict[str, Tensor], family: Family) -> tuple[dict[str, str], dict[str, str]]:
    """Checkpoint keys -> ({encoder key without prefix: original}, {head key: original}).

    With the family's prefix (``bert.``, ``roberta.`` ...) present, prefixed keys are the encoder and the rest
    task heads; without it, every key is the encoder's (a base ``XxxModel`` checkpoint).
    """
    prefix = family.prefix + "."
    prefixed = any(k.startswith(prefix) for k in keys)
    encoder, heads = {}, {}
    for key in keys:
        k = _clean(key)
        if prefixed and not k.startswith(prefix):
            heads[k] = key
        else:
            encoder[k[len(prefix):] if prefixed else k] = key
    return encoder, heads


def normalize_hf_keys(state: dict[str, Tensor], family: Family | None = None
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a checkpoint into (encoder tensors without prefix, task-head tensors); BERT's prefix by default."""
    if family is None:
        from bertkit.model.families import FAMILIES

        family = FAMILIES["bert"]
    encoder, heads = split_keys(list(state), family)
    return {k: state[v] for k, v in encoder.items()}, {k: state[v] for k, v in heads.items()}


def has_pooler(encoder_state: dict[str, Tensor] | dict[str, str]) -> bool:
    return "pooler.dense.weight" in encoder_state


def _layer_count(keys: list[str]) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.search(r"(?:^|\.)(?:layer|layers)\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Parameters created inside are left uninitialised (``torch.nn.init`` functions do nothing), as transformers'
    ``no_init_weights``: weights about to be replaced by a checkpoint's need no random values, and on the meta
    device torch would route each ``normal_`` through its Python reference kernels (importing torch._dynamo and
    sympy: 2.5 s of a cold load here)."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def check_config_against_header(cfg: EncoderConfig, shapes: dict[str, tuple[int, ...]], family: Family,
                                source: str, path: str = "unpadded") -> BertModel:
    """Refuse, naming the config field, a config its weights file contradicts; return the model built on the meta
    device (with a pooler when the weights have one), ready for ``load_hf_state(..., assign=True)``.

    Reads shapes only (``read_header_shapes``): the layer count first (so a config asking for a million layers is
    refused before even its key table is built), then every tensor against a model built on the meta device, which
    allocates nothing.
    """
    encoder, _ = split_keys(list(shapes), family)
    enc_shapes = {k: shapes[v] for k, v in encoder.items()}
    n = _layer_count(list(enc_shapes))
    if cfg.num_hidden_layers > n:
        from dataclasses import replace

        probe = replace(cfg, num_hidden_layers=n + 1, layer_types=None, intermediate_sizes=None, pruned_heads={},
                        extra=dict(cfg.extra))
        missing = [k for k in family.encoder_keys(probe, False) if re.search(rf"(?:layer|layers)\.{n}\.", k)]
        raise CheckpointError(f"{source}: weights do not match the config: config field 'num_hidden_layers' is "
                              f"{cfg.num_hidden_layers} but the weights hold {n} layers; missing tensors: "
                              f"{', '.join(missing[:10])}")
    pooler = has_pooler(enc_shapes)
    with torch.device("meta"), no_init():
        meta = BertModel(cfg, add_pooler=pooler, path=path)
    ours = meta.state_dict()
    problems = []
    for hf_key, (our_key, rows) in family.encoder_keys(cfg, pooler).items():
        if hf_key not in enc_shapes:
            continue  # reported by load_hf_state, with the other missing ones
        want = tuple(ours[our_key].shape if rows is None else ours[our_key][rows].shape)
        if enc_shapes[hf_key] != want:
            fields = _SHAPED_BY.get(our_key) or _SHAPED_BY.get(our_key.split(".", 2)[-1])
            why = f" (shaped by {', '.join(fields)})" if fields else ""
            problems.append(f"tensor '{hf_key}' has shape {enc_shapes[hf_key]}, config expects {want}{why}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(problems[:6])
                              + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))
    return meta


def load_hf_state(model: BertModel, encoder_state: dict[str, Tensor], source: str = "checkpoint",
                  assign: bool = False) -> None:
    """Fill ``model`` from HF-named tensors, strictly. Raises CheckpointError naming each problem.

    assign: ``model`` was built on the meta device: its parameters become the checkpoint's tensors (cast to the
    parameter's dtype; fused q/k/v concatenated), with no random initialisation and no copy to pay for.
    """
    key_map = hf_key_map(model.config, model.pooler is not None)
    ours = model.state_dict()
    problems: list[str] = []

    unexpected = [k for k in encoder_state if k not in key_map and k not in _CONSTANT_BUFFERS]
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:10])}"
                        + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [k for k in key_map if k not in encoder_state]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}"
                        + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    parts: dict[str, list[tuple[int, Tensor]]] = {k: [] for k in ours}  # our key -> (first row, tensor)
    for hf_key, (our_key, rows) in key_map.items():
        if hf_key not in encoder_state:
            continue
        src = encoder_state[hf_key]
        want = ours[our_key] if rows is None else ours[our_key][rows]
        if tuple(src.shape) != tuple(want.shape):
            problems.append(f"tensor '{hf_key}' has shape {tuple(src.shape)}, config expects {tuple(want.shape)}")
            continue
        parts[our_key].append((0 if rows is None else rows.start, src))
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(problems))
    state = {}
    for k, pieces in parts.items():
        pieces.sort(key=lambda x: x[0])
        full = ours[k].shape[0] if ours[k].dim() else 1
        assert sum(t.shape[0] if t.dim() else 1 for _, t in pieces) == full, f"key map bug: {k} not filled once"
        t = pieces[0][1] if len(pieces) == 1 else torch.cat([t for _, t in pieces])
        state[k] = t.to(ours[k].dtype).contiguous()
    with torch.no_grad():
        if assign:
            model.load_state_dict(state, strict=True, assign=True)
        else:
            for k, t in state.items():
                ours[k].copy_(t)


def hf_state_dict(model: BertModel) -> dict[str, Tensor]:
    """Our parameters under the family's HF base-model names (contiguous copies, ready for safetensors)."""
    ours = model.state_dict()
    out = {}
    for hf_key, (our_key, rows) in hf_key_map(model.config, model.pooler is not None).items():
        t = ours[our_key] if rows is None else ours[our_key][rows]
        out[hf_key] = t.detach().cpu().contiguous().clone()
    return out


def prefixed_state_dict(model: BertModel) -> dict[str, Tensor]:
    """As ``hf_state_dict`` under the family's task-model prefix (``bert.``, ``roberta.``, ``model.`` ...)."""
    prefix = family_of(model.config).prefix
    return {f"{prefix}.{k}": v for k, v in hf_state_dict(model).items()}


def write_safetensors(state: dict[str, Tensor], directory: str | os.PathLike[str]) -> Path:
    """Write ``directory/model.safetensors`` atomically (temp file, then rename)."""
    path = Path(directory) / "model.safetensors"
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return path


def save_weights(model: BertModel, directory: str | os.PathLike[str]) -> Path:
    return write_safetensors(hf_state_dict(model), directory)


def load_pretrained(directory: str | os.PathLike[str], path: str = "unpadded") -> tuple[BertModel, dict[str, Tensor]]:
    """Build the encoder of an HF-format directory of any family. Returns (model, task-head tensors)."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {d / 'config.json'})")
    cfg = read_config(d / "config.json")
    weights = find_weights_file(d)
    family = family_of(cfg)
    # the shapes are checked from the header before any weight is read; the model is built on the meta device
    # (no memory, no random init) and takes the checkpoint's tensors as its parameters
    model = check_config_against_header(cfg, read_header_shapes(weights), family, str(weights), path)
    encoder_state, heads = normalize_hf_keys(read_state_dict(weights), family)
    load_hf_state(model, encoder_state, source=str(weights), assign=True)
    return model.eval(), heads
