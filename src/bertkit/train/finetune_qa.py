"""``finetune(task="qa")``: extractive question answering on the training engine.

Data: SQuAD v1/v2 ``.json`` / ``.jsonl`` files (``--train``, ``--eval``, ``--test``; without ``--eval`` the training
questions are split 80/10/10 by a seeded shuffle), or the built-in synthetic set ``bbc-news-qa``
(``data.qa_synthetic``). Every window of a question is a training example (labels: run_qa's start/end tokens, [CLS]
where the answer is not in the window). The best checkpoint by dev F1 is kept as a ``QAModel`` directory, which
transformers' ``AutoModelForQuestionAnswering`` loads as it is; results.json has dev/test exact match and F1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bertkit.data.features import shuffled_batches
from bertkit.data.qa_synthetic import bbc_news_qa
from bertkit.data.squad import QAData, read_squad
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import BertkitError
from bertkit.model.directory import load_encoder
from bertkit.model.heads import QuestionAnsweringHead, strip_task_keys
from bertkit.qa_model import QAModel
from bertkit.task_model import MAIN_METRIC
from bertkit.train.distributed import init_distributed, rank_share
from bertkit.train.finetune_setup import (
    CONFIG_FILE,
    RESULTS_FILE,
    FinetuneResult,
    apply_stability_options,
    pooler_unused,
    prepare_output_dir,
)
from bertkit.train.trainer import Trainer
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

QA_DATASETS = ("bbc-news-qa",)


def load_qa_splits(cfg) -> dict[str, QAData]:
    """train/dev(/test) of a ``FinetuneConfig`` with task "qa"."""
    if cfg.dataset:
        if cfg.dataset not in QA_DATASETS:
            raise ValueError(f"dataset {cfg.dataset!r} has no questions; question-answering data sets: "
                             f"{', '.join(QA_DATASETS)}, or --train FILE (SQuAD .json / .jsonl)")
        return {s: bbc_news_qa(s, seed=cfg.training.seed) for s in ("train", "dev", "test")}
    if not cfg.train_file:
        raise ValueError("no training data: give --dataset bbc-news-qa or --train FILE (SQuAD .json / .jsonl)")
    train = read_squad(cfg.train_file)
    if cfg.eval_file:
        splits = {"train": train, "dev": read_squad(cfg.eval_file)}
        if cfg.test_file:
            splits["test"] = read_squad(cfg.test_file)
        return splits
    order = np.random.default_rng(cfg.training.seed).permutation(len(train))
    n_dev = n_test = len(train) // 10
    parts = {"dev": order[:n_dev], "test": order[n_dev:n_dev + n_test], "train": order[n_dev + n_test:]}
    return {k: QAData([train.examples[i] for i in sorted(v)], f"{train.source} ({k})") for k, v in parts.items()}


def finetune_qa(output_dir: str | Path, cfg, *, resume: bool = False, overwrite: bool = False,
                callbacks: tuple = ()):
    """Called by ``train.finetune.finetune`` for ``task="qa"``; returns its ``FinetuneResult``."""

    tcfg = dataclasses.replace(cfg.training, metric=cfg.training.metric or MAIN_METRIC["qa"][0])
    out = Path(output_dir)
    dist = init_distributed(tcfg.device)
    rank_share(tcfg.batch_size, dist.world_size)
    splits = load_qa_splits(cfg)
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    if len(train) == 0:
        raise BertkitError(f"{train.source}: the training set is empty")
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite)
    dist.barrier()
    if dist.device.type == "cpu":
        tune_allocator()
    torch.manual_seed(tcfg.seed)
    encoder, _, info = load_encoder(cfg.model, who="fine-tuning")
    strip_task_keys(encoder.config)
    head = QuestionAnsweringHead(encoder)
    apply_stability_options(encoder, cfg)
    max_length = min(cfg.max_length, encoder.config.max_tokens)
    qa = QAModel(head, Tokenizer.from_dir(info.weights_dir), max_length, cfg.doc_stride, cfg.max_answer_length,
                 cfg.null_threshold, out)
    train_feats = qa.featurize(train, with_labels=True).features
    if dist.is_main:
        atomic_write_text(out / CONFIG_FILE, json.dumps({**asdict(cfg), "model_dir": str(info.path)}, indent=2)
                          + "\n")
        qa.tokenizer.save(out)
    log.info("fine-tuning %s for question answering on %s: %d questions (%d windows) / %d dev, max_length %d, "
             "doc_stride %d", info.path.name, cfg.dataset or cfg.train_file, len(train), len(train_feats),
             len(dev) if dev is not None else 0, max_length, cfg.doc_stride)
    has_dev = dev is not None and len(dev) > 0
    trainer = Trainer(
        head, dataclasses.replace(tcfg, batch_size=rank_share(tcfg.batch_size, dist.world_size),
                                  device=str(dist.device)),
        batches=lambda epoch: shuffled_batches(train_feats, tcfg.batch_size, tcfg.seed, epoch, dist.rank,
                                               dist.world_size),
        loss_fn=qa.loss, output_dir=out,
        evaluate=(lambda _m: qa.evaluate(dev)) if has_dev else None,
        on_best=lambda _m, _metrics: qa.save_pretrained(out, tokenizer=False),
        fingerprint={"task": "qa", "model": str(info.path), "train_examples": len(train), "max_length": max_length,
                     "doc_stride": cfg.doc_stride, "encoder": encoder.config.to_dict(),
                     "world_size": dist.world_size},
        callbacks=callbacks, find_unused_parameters=pooler_unused(head))
    state = trainer.fit(resume=resume)
    if not has_dev and dist.is_main:
        qa.save_pretrained(out, tokenizer=False)
    dist.barrier()
    best = QAModel.from_pretrained(out, device=dist.device)
    dev_metrics = best.evaluate(dev) if has_dev else None
    test_metrics = best.evaluate(test) if test is not None and len(test) else None
    results = {"task": "qa", "dataset": cfg.dataset or cfg.train_file, "stopped": state.stopped,
               "steps": state.step, "best_step": state.best_step, "train_seconds": round(state.elapsed, 1),
               "train_tokens": state.tokens, "train_tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
               "world_size": dist.world_size, "dev": dev_metrics, "test": test_metrics}
    if dist.is_main:
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    dist.barrier()
    return FinetuneResult(out, state, dev_metrics, test_metrics, best)
