"""Low-rank factorisation of the encoder's linear layers by truncated SVD.

A dense ``W (out, in)`` becomes ``U (out, r) @ V (r, in)``: ``r * (in + out)`` weights instead of
``in * out``, two thin GEMMs instead of one. With ``W = P diag(s) Q^T`` (singular values ``s`` in
decreasing order) the best rank-r approximation in Frobenius norm (Eckart-Young) keeps the top r
triplets; we split each singular value evenly, ``U = P_r sqrt(s_r)``, ``V = sqrt(s_r) Q_r^T``, so the
two factors have the same scale, which keeps a fine-tune after factorisation well conditioned.

Choosing r:
  ``rank=r``        as asked (at most min(in, out))
  ``energy=e``      the smallest r with ``sum_{i<=r} s_i^2 >= e * sum_i s_i^2``: the approximation keeps a
                    fraction e of ``||W||_F^2`` and its relative error ``||W - UV||_F / ||W||_F`` is
                    ``sqrt(1 - kept)`` <= ``sqrt(1 - e)``
Either way a layer is factorised only when it gets smaller, ``r * (in + out) < in * out``; otherwise it
stays dense and the report (and the log) says so. Random or freshly fine-tuned BERT matrices have flat
spectra, so high energies often keep layers dense: factorisation pays on trained weights with decaying
spectra, and a short fine-tune (``finetune_lowrank``) recovers what truncation loses.

Saved layout (``save_lowrank``): the HF directory of ``TaskModel.save_pretrained`` / an encoder, in the model's
family layout (``roberta.*`` + ``classifier.dense/out_proj``, ``model.*`` + ``head.*`` ...), except
that each factorised layer's dense ``weight`` is replaced by ``lowrank.<our module name>.U`` and ``.V``
in ``model.safetensors`` (its bias keeps its HF name), and ``config.json`` has a ``"lowrank"`` section
``{our module name: rank}``. ``load_lowrank`` reads it; ordinary loaders refuse it (missing dense
tensors, named), since neither transformers nor ``bertkit.load`` know the factors. ``densify`` turns the
factors back into dense layers (``U @ V``) for an HF-loadable save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.features import Features, shuffled_batches
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import pick_device
from bertkit.errors import CheckpointError
from bertkit.inference.engine import Engine
from bertkit.model.bert import BertModel
from bertkit.model.families import family_of, read_config, write_config
from bertkit.model.heads import strip_task_keys
from bertkit.model.weights import (
    find_weights_file,
    has_pooler,
    hf_key_map,
    hf_state_dict,
    load_hf_state,
    normalize_hf_keys,
    read_state_dict,
    write_safetensors,
)
from bertkit.task_model import MAIN_METRIC, TASK_FILE, TaskModel, build_head
from bertkit.train.trainer import TrainConfig, Trainer, TrainState
from bertkit.utils.atomic import atomic_write_text

log = logging.getLogger("bertkit")

LAYER_LINEARS = ("Wqkv", "attn_out", "mlp_in", "mlp_out")  # the linear layers of each encoder layer
LOWRANK_KEY = "lowrank"  # config.json section {module name: rank}
FACTOR_PREFIX = "lowrank."  # safetensors keys lowrank.<module name>.U / .V


class LowRankLinear(nn.Module):
    """y = x V^T U^T + b: a rank-r stand-in for ``nn.Linear(in, out)``. U (out, r), V (r, in), bias (out,)."""

    def __init__(self, U: Tensor, V: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[0]:
            raise ValueError(f"LowRankLinear needs U (out, r) and V (r, in); got U {tuple(U.shape)}, "
                             f"V {tuple(V.shape)}")
        if bias is not None and tuple(bias.shape) != (U.shape[0],):
            raise ValueError(f"LowRankLinear bias has shape {tuple(bias.shape)}, expected ({U.shape[0]},)")
        # Row-major copies (LAPACK hands back column-major factors): the GEMMs, and so the outputs, then
        # match bit for bit whether the factors came from an SVD or from a file.
        self.U = nn.Parameter(U.detach().clone(memory_format=torch.contiguous_format))
        self.V = nn.Parameter(V.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def in_features(self) -> int:
        return self.V.shape[1]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def rank(self) -> int:
        return self.V.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out): two thin GEMMs, never the dense (out, in) matrix."""
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def dense_weight(self) -> Tensor:
        """U @ V: (out, in)."""
        return self.U @ self.V

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


# ---- SVD and rank choice ---------------------------------------------------------------------
def low_rank_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD of weight (out, in) -> (U (out, rank), V (rank, in)), in weight's dtype.

    No size check here: ``rank`` may be anything from 1 to min(out, in).
    """
    out_f, in_f = weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank {rank} is out of range for a ({out_f}, {in_f}) matrix: 1..{min(out_f, in_f)}")
    P, s, Qh = torch.linalg.svd(weight.detach().double(), full_matrices=False)  # float64: exact ranks on tests
    root = s[:rank].sqrt()
    U, V = P[:, :rank] * root, root[:, None] * Qh[:rank]
    return U.to(weight.dtype).contiguous(), V.to(weight.dtype).contiguous()


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """Smallest r with sum_{i<=r} s_i^2 >= energy * sum_i s_i^2; s in decreasing order."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    cum = (singular_values.double() ** 2).cumsum(0)
    # cum is non-decreasing: the count of prefixes still short of the target is r - 1. At energy 1 the
    # last prefix equals the total, so r never exceeds the number of singular values.
    return int((cum < energy * cum[-1]).sum()) + 1


def max_useful_rank(in_features: int, out_features: int) -> int:
    """The largest r with r * (in + out) < in * out: beyond it the factors outweigh the dense matrix."""
    return (in_features * out_features - 1) // (in_features + out_features)


def reconstruction_error(weight: Tensor, U: Tensor, V: Tensor) -> float:
    """||W - U V||_F / ||W||_F (0 for a zero W reproduced exactly)."""
    w = weight.detach().double()
    diff = torch.linalg.matrix_norm(w - U.detach().double() @ V.detach().double())
    norm = torch.linalg.matrix_norm(w)
    return float(diff / norm) if norm > 0 else float(diff)


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out, in)
    rank: int | None  # None: kept dense
    params_before: int  # weights + bias
    params_after: int
    error: float  # ||W - UV||_F / ||W||_F; 0 when kept dense
    energy_kept: float  # fraction of ||W||_F^2 the factors keep; 1 when kept dense
    note: str = ""  # why a layer stayed dense


@dataclass
class LowRankReport:
    layers: list[LayerReport]

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "layers": [dataclasses.asdict(r) for r in self.layers]}

    def __str__(self) -> str:
        lines = [f"{'layer':<22} {'shape':>12} {'rank':>5} {'params':>21} {'rel.error':>9}"]
        for r in self.layers:
            lines.append(f"{r.name:<22} {r.shape!s:>12} {r.rank if r.rank else 'dense':>5} "
                         f"{r.params_before:>10,}->{r.params_after:<10,} {r.error:>9.4f}"
                         + (f"  ({r.note})" if r.note else ""))
        lines.append(f"selected layers: {self.params_before:,} -> {self.params_after:,} parameters")
        return "\n".join(lines)


def _factorize(linear: nn.Linear, name: str, rank: int | None, energy: float) -> tuple[nn.Module, LayerReport]:
    w = linear.weight
    out_f, in_f = w.shape
    n_bias = 0 if linear.bias is None else out_f
    dense = in_f * out_f + n_bias
    s = torch.linalg.svdvals(w.detach().double())
    if rank is None:
        r = rank_for_energy(s, energy)
        asked = f"energy {energy:g} needs rank {r}"
    else:
        if not 1 <= rank <= min(out_f, in_f):
            raise ValueError(f"{name}: rank {rank} is out of range for its ({out_f}, {in_f}) weight: "
                             f"1..{min(out_f, in_f)}")
        r, asked = rank, f"rank {rank} asked"
    cap = max_useful_rank(in_f, out_f)
    if r > cap:
        note = f"kept dense: {asked}, and rank {r} x ({in_f} + {out_f}) >= {in_f} x {out_f} dense weights"
        (log.warning if rank is not None else log.info)("low-rank: %s %s", name, note)
        return linear, LayerReport(name, (out_f, in_f), None, dense, dense, 0.0, 1.0, note)
    U, V = low_rank_factors(w, r)
    sq = s ** 2
    kept = float(sq[:r].sum() / sq.sum()) if sq.sum() > 0 else 1.0
    layer = LowRankLinear(U, V, linear.bias).to(w.device)
    return layer, LayerReport(name, (out_f, in_f), r, dense, r * (in_f + out_f) + n_bias,
                              reconstruction_error(w, U, V), kept)


def factorize(linear: nn.Linear, rank: int | None = None, energy: float = 0.9) -> LowRankLinear | nn.Linear:
    """Truncated-SVD factorisation of one layer: ``rank`` if given, else the smallest rank keeping ``energy``
    of ||W||_F^2. Returns ``linear`` itself (and logs why) when that rank would not make it smaller."""
    if type(linear) is not nn.Linear:
        raise TypeError(f"factorize() takes an nn.Linear, got {type(linear).__name__}")
    return _factorize(linear, "linear", rank, energy)[0]


def _encoder_of(model: Any) -> BertModel:
    if isinstance(model, BertModel):
        return model
    if isinstance(model, TaskModel):
        return model.head.encoder
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, BertModel):
        return encoder
    raise TypeError(f"expected a BertModel, a task head or a TaskModel, got {type(model).__name__}")


def _select(encoder: BertModel, layers: Iterable[str]) -> list[str]:
    """Module names for ``layers`` entries: a kind (``mlp_in``: that layer of every encoder layer) or a full
    name (``layers.3.mlp_in``)."""
    names: list[str] = []
    for entry in layers:
        if entry in LAYER_LINEARS:
            names += [f"layers.{i}.{entry}" for i in range(len(encoder.layers))]
            continue
        parts = entry.split(".")
        if not (len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in LAYER_LINEARS
                and int(parts[1]) < len(encoder.layers)):
            raise ValueError(f"unknown layer {entry!r}: give one of {', '.join(LAYER_LINEARS)} or a name like "
                             f"'layers.0.mlp_in' (the model has {len(encoder.layers)} layers)")
        names.append(entry)
    return list(dict.fromkeys(names))


def factorize_model(model: Any, layers: Iterable[str] = ("mlp_in", "mlp_out"), energy: float = 0.9,
                    ranks: int | Mapping[str, int] | None = None) -> LowRankReport:
    """Factorise the named linear layers of a BertModel / task head / TaskModel's encoder in place.

    layers: kinds (``Wqkv``, ``attn_out``, ``mlp_in``, ``mlp_out``, for every encoder layer) or full names
    (``layers.3.mlp_in``). ranks: one rank for all, or {full name or kind: rank} (a full name wins);
    layers without one use ``energy``. Layers a rank would not shrink stay dense (see the report's notes).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    encoder = _encoder_of(model)
    names = _select(encoder, layers)
    if isinstance(ranks, Mapping):
        unknown = [k for k in ranks if k not in names and not any(n.endswith("." + k) for n in names)]
        if unknown:
            raise ValueError(f"ranks names layer(s) not selected for factorisation: {', '.join(unknown)}")
    reports = []
    for name in names:
        module = encoder.get_submodule(name)
        if type(module) is not nn.Linear:
            raise ValueError(f"{name} is a {type(module).__name__}, not a dense nn.Linear (already factorised "
                             "or quantized?)")
        if isinstance(ranks, Mapping):
            rank = ranks.get(name, ranks.get(name.rsplit(".", 1)[1]))
        else:
            rank = ranks
        new, report = _factorize(module, name, rank, energy)
        if new is not module:
            parent, _, attr = name.rpartition(".")
            setattr(encoder.get_submodule(parent), attr, new)
        reports.append(report)
    result = LowRankReport(reports)
    log.info("low-rank: %d of %d layers factorised, %s -> %s parameters", sum(r.rank is not None for r in reports),
             len(reports), f"{result.params_before:,}", f"{result.params_after:,}")
    return result


def lowrank_layers(model: Any) -> dict[str, LowRankLinear]:
    """{module name in the encoder: layer} of every factorised layer."""
    return {n: m for n, m in _encoder_of(model).named_modules() if isinstance(m, LowRankLinear)}


@torch.no_grad()
def densify(model: Any) -> int:
    """Replace every LowRankLinear by an nn.Linear with weight U @ V (then ``save_pretrained`` writes a plain,
    HF-loadable model). Returns how many layers were replaced."""
    encoder = _encoder_of(model)
    found = lowrank_layers(encoder)
    for name, m in found.items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.U.device, dtype=m.U.dtype)
        lin.weight.copy_(m.dense_weight())
        if m.bias is not None:
            lin.bias.copy_(m.bias)
        parent, _, attr = name.rpartition(".")
        setattr(encoder.get_submodule(parent), attr, lin)
    return len(found)


# ---- a short fine-tune after factorisation ------------------------------------------------------
def finetune_lowrank(task_model: TaskModel, train: TaskData | Features, steps: int = 100, lr: float = 1e-4,
                     batch_size: int = 16, dev: TaskData | None = None, only_factors: bool = False,
                     output_dir: str | os.PathLike[str] | None = None, **settings: Any) -> TrainState:
    """Recover what truncation lost: ``steps`` optimizer steps of the ordinary training engine on ``train``.

    dev: evaluated every epoch (or ``eval_every`` steps); the best weights by the task's main metric are
    restored at the end. only_factors: train the U/V factors (and their biases) alone, everything else frozen.
    output_dir: where the engine writes metrics.jsonl and checkpoints (default: a temporary folder, removed).
    settings: other ``TrainConfig`` fields (seed, warmup_ratio, weight_decay, eval_every, device, ...).
    """
    head = task_model.head
    feats = task_model.featurize(train) if isinstance(train, TaskData) else train
    if feats.labels is None:
        raise ValueError("finetune_lowrank needs labelled training data")
    settings = {"progress": False, **settings}
    if dev is not None:
        settings.setdefault("metric", MAIN_METRIC[task_model.task][0])
    cfg = TrainConfig(max_steps=steps, lr=lr, batch_size=batch_size, **settings)
    frozen = []
    if only_factors:
        factor_params = {id(p) for m in lowrank_layers(head).values() for p in m.parameters()}
        if not factor_params:
            raise ValueError("only_factors=True, but the model has no factorised layers; run factorize_model first")
        frozen = [p for p in head.parameters() if p.requires_grad and id(p) not in factor_params]
        for p in frozen:
            p.requires_grad_(False)
    best: dict[str, Tensor] = {}

    def keep_best(module: nn.Module, _metrics: dict[str, float]) -> None:
        best.clear()
        best.update({k: v.detach().clone() for k, v in module.state_dict().items()})

    try:
        with tempfile.TemporaryDirectory(prefix="bertkit-lowrank-") as tmp:
            trainer = Trainer(
                head, cfg, batches=lambda epoch: shuffled_batches(feats, cfg.batch_size, cfg.seed, epoch),
                loss_fn=task_model.loss, output_dir=output_dir or tmp,
                evaluate=(lambda _m: task_model.evaluate(dev)) if dev is not None else None,
                on_best=keep_best if dev is not None else None)
            state = trainer.fit()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if best:
        head.load_state_dict(best)
    head.eval()
    return state


# ---- save / load ---------------------------------------------------------------------------------
def _hf_state(model: BertModel | nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The family's HF tensors of an encoder (base layout) or task head (prefixed, with the head's own names)
    without the factorised layers' dense weights, plus their factors ``lowrank.<name>.U / .V``."""
    encoder = _encoder_of(model)
    lowrank = lowrank_layers(encoder)
    # The family layouts read nn.Linear weights: stand dense layers in while the state is read, then put the
    # factorised modules back (the same objects, so the model is unchanged).
    densify(encoder)
    try:
        state = hf_state_dict(encoder) if model is encoder else model.hf_state_dict()
    finally:
        for name, m in lowrank.items():
            parent, _, attr = name.rpartition(".")
            setattr(encoder.get_submodule(parent), attr, m)
    prefix = "" if model is encoder else family_of(encoder.config).prefix + "."
    for hf_key, (our_key, _) in hf_key_map(encoder.config, encoder.pooler is not None).items():
        if our_key.removesuffix(".weight") in lowrank and our_key.endswith(".weight"):
            del state[prefix + hf_key]
    factors = {f"{FACTOR_PREFIX}{name}.{p}": getattr(m, p).detach().cpu().contiguous().clone()
               for name, m in lowrank.items() for p in ("U", "V")}
    return state, factors


def save_lowrank(model: TaskModel | BertModel, directory: str | os.PathLike[str]) -> Path:
    """Write a factorised TaskModel (HF task layout + tokenizer + bertkit_task.json) or encoder; see the
    module docstring for the format."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    encoder = _encoder_of(model)
    state, factors = _hf_state(model.head if isinstance(model, TaskModel) else encoder)
    section = {name: m.rank for name, m in lowrank_layers(encoder).items()}
    extra = {**encoder.config.extra, LOWRANK_KEY: section}
    if isinstance(model, TaskModel):
        head = model.head
        labels = model.labels or [f"LABEL_{i}" for i in range(head.num_labels)]
        extra.update({"architectures": [family_of(encoder.config).architecture(encoder.config.model_type, head.kind)],
                      "id2label": {str(i): n for i, n in enumerate(labels)},
                      "label2id": {n: i for i, n in enumerate(labels)}, "problem_type": head.problem_type})
        model.tokenizer.save(d)
        atomic_write_text(d / TASK_FILE, json.dumps(model.task_meta(), indent=2) + "\n")
    write_safetensors({**state, **factors}, d)
    write_config(dataclasses.replace(encoder.config, extra=extra), d)  # last: the directory is complete once it exists
    return d


def _load_encoder(d: Path, path: str) -> tuple[BertModel, dict[str, Tensor]]:
    """(encoder with its LowRankLinear layers, task-head tensors) from a ``save_lowrank`` directory."""
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json found (looked for {d / 'config.json'})")
    cfg = read_config(d / "config.json")
    section = cfg.extra.pop(LOWRANK_KEY, None)  # rewritten from the modules on save: never stale
    if not isinstance(section, dict):
        raise CheckpointError(f"{d}: config.json has no '{LOWRANK_KEY}' section {{layer: rank}}, so it was not "
                              "written by save_lowrank; load it with TaskModel.from_pretrained / bertkit.load")
    weights = find_weights_file(d)
    raw = read_state_dict(weights)
    factors = {k[len(FACTOR_PREFIX):]: raw.pop(k) for k in list(raw) if k.startswith(FACTOR_PREFIX)}
    encoder_state, heads = normalize_hf_keys(raw, family_of(cfg))
    model = BertModel(cfg, add_pooler=has_pooler(encoder_state), path=path)
    key_map = hf_key_map(cfg, model.pooler is not None)
    problems: list[str] = []
    pairs: dict[str, tuple[Tensor, Tensor]] = {}
    for name, rank in section.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if type(module) is not nn.Linear:
            problems.append(f"'{LOWRANK_KEY}' names {name!r}, which is not a linear layer of this model")
            continue
        U, V = factors.pop(f"{name}.U", None), factors.pop(f"{name}.V", None)
        want_u, want_v = (module.out_features, rank), (rank, module.in_features)
        if U is None or V is None:
            problems.append(f"missing tensor {FACTOR_PREFIX}{name}.{'U' if U is None else 'V'}")
            continue
        if tuple(U.shape) != want_u or tuple(V.shape) != want_v:
            problems.append(f"{FACTOR_PREFIX}{name}.U/.V have shapes {tuple(U.shape)}/{tuple(V.shape)}, "
                            f"expected {want_u}/{want_v} (rank {rank})")
            continue
        # Stand U @ V in for the dense weight so the strict loader checks every other tensor as usual.
        dense = (U.double() @ V.double()).to(module.weight.dtype)
        for hf_key, (our_key, rows) in key_map.items():
            if our_key == f"{name}.weight":
                if hf_key in encoder_state:
                    problems.append(f"'{hf_key}' is stored dense, but '{LOWRANK_KEY}' says {name} is factorised")
                encoder_state[hf_key] = dense if rows is None else dense[rows]
        pairs[name] = (U, V)
    if factors:
        problems.append(f"unexpected tensors: {', '.join(FACTOR_PREFIX + k for k in sorted(factors))}")
    if problems:
        raise CheckpointError(f"{weights}: low-rank weights do not match config.json: " + "; ".join(problems))
    load_hf_state(model, encoder_state, source=str(weights))
    for name, (U, V) in pairs.items():
        dense_layer = model.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, LowRankLinear(U, V, dense_layer.bias))
    return model.eval(), heads


def load_lowrank(directory: str | os.PathLike[str], device: str | torch.device | None = None,
                 path: str = "unpadded") -> TaskModel | BertModel:
    """Read a ``save_lowrank`` directory: a TaskModel when it holds one (bertkit_task.json), else the encoder."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    encoder, heads = _load_encoder(d, path)
    dev = pick_device(device)
    if not (d / TASK_FILE).is_file():
        return encoder.to(dev)
    meta = json.loads((d / TASK_FILE).read_text(encoding="utf-8"))
    task = meta.get("task")
    if not task:
        raise CheckpointError(f"{d / TASK_FILE}: no 'task' entry")
    id2label = encoder.config.extra.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)] if task != "regression" else []
    strip_task_keys(encoder.config)
    head = build_head(encoder, task, max(len(labels), 1))
    head.load_head_state(heads, source=str(d))
    head.to(dev).eval()
    tokenizer = Tokenizer.from_dir(d)
    engine = Engine()
    engine.prepare(encoder, tokenizer, dev, str(d))
    max_length = int(meta.get("max_length") or min(512, encoder.config.max_tokens))
    tm = TaskModel(head, tokenizer, task, labels, max_length, d, engine, scheme=meta.get("scheme"))
    tm.read_thresholds(meta, d / TASK_FILE)  # a multi-label model's tuned thresholds carry over
    return tm


__all__ = ["LAYER_LINEARS", "LayerReport", "LowRankLinear", "LowRankReport", "densify", "factorize",
           "factorize_model", "finetune_lowrank", "load_lowrank", "low_rank_factors", "lowrank_layers",
           "max_useful_rank", "rank_for_energy", "reconstruction_error", "save_lowrank"]
