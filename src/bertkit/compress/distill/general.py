"""General distillation: raw text, no labels; the student learns the teacher's hidden states and attention.

Task-agnostic (MiniLM's last-layer attention and value relations by default): a plain encoder directory comes out
(``bertkit.load``, ``finetune --model``, ``DistillConfig.student_model``), trained on fixed-length rows of a corpus
as pretraining reads it (the same token cache). Under ``torchrun`` ``batch_size`` rows is the global batch, each rank
distils its slice of every batch; rank 0 builds the token cache and writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.compress.distill.config import (
    GENERAL_CONFIG_FILE,
    GENERAL_OUTPUT_FILES,
    RESULTS_FILE,
    GeneralDistillConfig,
)
from bertkit.compress.distill.distiller import Distiller
from bertkit.compress.distill.students import count_parameters, student_from_config, student_from_teacher
from bertkit.data.batch import DeviceBatch
from bertkit.data.corpus import PackedSequences, build_token_cache, epoch_order, shard_batches
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import ConfigError
from bertkit.model.attention import Packing
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.families import write_config
from bertkit.model.heads import strip_task_keys
from bertkit.model.weights import save_weights
from bertkit.train.distributed import init_distributed, rank_share
from bertkit.train.finetune import prepare_output_dir
from bertkit.train.pretrain import default_cache_dir
from bertkit.train.trainer import Trainer, TrainState
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")


@dataclass
class TextBatch(DeviceBatch):
    """Fixed-length rows of raw text, packed: ids (total_tokens,)."""

    input_ids: Tensor
    packing: Packing
    num_tokens: int
    num_units: int  # tokens: the attention losses average over query tokens


def text_batch(seqs: PackedSequences, rows: np.ndarray) -> TextBatch:
    ids = torch.from_numpy(seqs.take(rows)).flatten()
    return TextBatch(ids, Packing.from_lengths([seqs.max_length] * len(rows)), ids.numel(), ids.numel())


@dataclass
class GeneralDistillResult:
    output_dir: Path
    state: TrainState
    eval: dict[str, float] | None


def distill_general(output_dir: str | os.PathLike[str], config: GeneralDistillConfig | None = None, *,
                    resume: bool = False, overwrite: bool = False, callbacks: tuple = (),
                    **settings: Any) -> GeneralDistillResult:
    """Task-agnostic distillation on raw text (hidden, attention and value-relation losses); writes a plain
    encoder directory (``bertkit.load``, ``finetune --model``, ``DistillConfig.student_model``).
    callbacks: called with the Trainer after each step, as ``distill``'s.

    >>> distill_general("runs/minilm-3l", teacher="all-MiniLM-L6-v2", student_layers=[1, 3, 5], corpus=["bbc-news"])
    """
    if config is not None and settings:
        raise ValueError("pass either config= or keyword settings, not both")
    cfg = config or GeneralDistillConfig.from_dict(settings)
    cfg.validate()
    tcfg = cfg.training
    out = Path(output_dir)
    dist = init_distributed(tcfg.device)
    per_rank = rank_share(tcfg.batch_size, dist.world_size)  # an uneven global batch fails before any work
    device = dist.device
    if device.type == "cpu":
        tune_allocator()
    info = inspect_model_dir(cfg.teacher)
    teacher_dir = info.path
    teacher, _, _ = load_encoder(info, who="a distillation teacher")
    strip_task_keys(teacher.config)
    teacher.to(device)
    tok = Tokenizer.from_dir(info.weights_dir)
    if cfg.max_length > teacher.config.max_tokens:
        raise ConfigError(f"max_length {cfg.max_length} exceeds the teacher's limit of {teacher.config.max_tokens} "
                          f"tokens (max_position_embeddings {teacher.config.max_position_embeddings})")
    torch.manual_seed(tcfg.seed)
    if cfg.student_layers:
        student = student_from_teacher(teacher, cfg.student_layers)
        copied = list(cfg.student_layers)
    else:
        student, copied = student_from_config(teacher, cfg.student_config), None
    distiller = Distiller(student, [teacher], alpha_hidden=cfg.alpha_hidden, alpha_attn=cfg.alpha_attn,
                          alpha_value=cfg.alpha_value, layer_map=cfg.layer_map if cfg.layer_map is not None else copied,
                          attn_layers=cfg.attn_layers, relation_heads=cfg.relation_heads)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.corpus, tok)
    if dist.is_main:  # rank 0 builds the cache (and the output directory); the others open the finished one
        cache = build_token_cache(cfg.corpus, tok, cache_dir)
        prepare_output_dir(out, resume, overwrite, GENERAL_OUTPUT_FILES)
        atomic_write_text(out / GENERAL_CONFIG_FILE, json.dumps(asdict(cfg), indent=2) + "\n")
        tok.save(out)
    dist.barrier()
    if not dist.is_main:
        cache = build_token_cache(cfg.corpus, tok, cache_dir)
    seqs = PackedSequences(cache, cfg.max_length, tok.cls_id, tok.sep_id)
    train_rows, eval_rows = seqs.split(eval_sequences=cfg.eval_sequences, seed=tcfg.seed)
    eval_batches = [text_batch(seqs, eval_rows[i:i + tcfg.batch_size])
                    for i in range(0, len(eval_rows), tcfg.batch_size)]

    def batches(epoch: int) -> list[TextBatch]:
        order = train_rows[epoch_order(len(train_rows), tcfg.seed, epoch)]
        return [text_batch(seqs, rows) for rows in shard_batches(order, tcfg.batch_size, dist.rank, dist.world_size,
                                                                 drop_last=False)]

    def evaluate(_m: nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        for b in eval_batches:
            for k, v in distiller.losses(b.to(device)).items():
                sums[k] = sums.get(k, 0.0) + float(v) * b.num_tokens
        n = sum(b.num_tokens for b in eval_batches)
        return {**{k: v / n for k, v in sums.items()}, **distiller.pop_train_losses()}

    def save(_m: nn.Module | None = None, _metrics: dict | None = None) -> None:
        write_config(student.config, out)
        save_weights(student, out)

    log.info("general distillation of %s into a %d-layer student: %d train / %d held-out rows of %d tokens",
             teacher_dir.name, len(student.layers), len(train_rows), len(eval_rows), cfg.max_length)
    # the attention and value losses read the last layer's queries, keys and values only: the student's parts
    # after them (and any pooler) get no gradient, hence find_unused_parameters
    trainer = Trainer(distiller, dataclasses.replace(tcfg, batch_size=per_rank, device=str(device)), batches=batches,
                      loss_fn=lambda m, b: m(b), output_dir=out,
                      evaluate=evaluate if eval_batches else None, on_best=save,
                      fingerprint={"teacher": str(teacher_dir.resolve()), "corpus": cfg.corpus,
                                   "student": student.config.to_dict(), "layer_map": distiller.layer_map,
                                   "max_length": cfg.max_length, "eval_sequences": cfg.eval_sequences,
                                   "world_size": dist.world_size},
                      callbacks=callbacks, find_unused_parameters=True)
    state = trainer.fit(resume=resume)
    if not eval_batches and dist.is_main:
        save()
    best = state.history and min(state.history, key=lambda r: r["loss"])
    results = {"teacher": str(teacher_dir), "corpus": cfg.corpus, "stopped": state.stopped, "steps": state.step,
               "best_step": state.best_step, "train_seconds": round(state.elapsed, 1),
               "student_parameters": count_parameters(student), "teacher_parameters": count_parameters(teacher),
               "world_size": dist.world_size, "eval": best or None}
    if dist.is_main:
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return GeneralDistillResult(out, state, best or None)
