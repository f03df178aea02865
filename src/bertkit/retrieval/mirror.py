"""Mirror-BERT (Liu et al., 2021): sentence embeddings from raw text alone, in minutes.

Each sentence is its own positive: two "mirror" views of the same token sequence, each with one random
span of ``span`` tokens replaced by [MASK] (input augmentation), go through the encoder with dropout on
(feature augmentation, so even identical views differ). The loss is the bi-encoder's in-batch
cross-entropy in both directions (view 1 -> view 2 and back), with the other sentences of the batch as
negatives, at a low temperature (scale 25 = 1 / 0.04, as in the paper).

We mask spans of WordPiece tokens rather than of characters (the paper masks 5 characters): the
sentences are tokenized once and only the masks are redrawn, per (seed, epoch, sentence).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import Tensor

from bertkit.data.corpus import iter_documents
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.bert import BertModel
from bertkit.model.dropout import Dropout
from bertkit.retrieval.biencoder import (
    OUTPUT_FILES,
    BiEncoder,
    EmbeddingTrainResult,
    PairBatch,
    fit_biencoder,
    gather_rows,
    in_batch_loss,
    load_base,
    pair_batches,
)
from bertkit.retrieval.data import RetrievalData
from bertkit.train.distributed import init_distributed, rank_share
from bertkit.train.finetune import prepare_output_dir
from bertkit.train.trainer import TrainConfig

log = logging.getLogger("bertkit")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def raw_sentences(texts: Iterable[str], min_words: int = 4, max_texts: int | None = 10_000,
                  seed: int = 42) -> list[str]:
    """Split texts into lines and sentences; keep distinct ones of at least ``min_words`` words; a seeded
    sample of at most ``max_texts``."""
    seen: dict[str, None] = {}
    for text in texts:
        for line in text.splitlines():
            for s in _SENTENCE_END.split(line.strip()):
                if len(s.split()) >= min_words:
                    seen.setdefault(s, None)
    out = list(seen)
    if max_texts is not None and len(out) > max_texts:
        keep = np.sort(np.random.default_rng(seed).choice(len(out), max_texts, replace=False))
        out = [out[i] for i in keep]
    return out


def corpus_sentences(sources: Iterable[str | os.PathLike[str]], **kwargs) -> list[str]:
    """Sentences of corpus sources (files, folders, built-in names, as ``bertkit pretrain`` reads them)."""
    return raw_sentences(iter_documents(sources), **kwargs)


def mask_span(ids: list[int], span: int, mask_id: int, rng: np.random.Generator) -> list[int]:
    """[CLS] t1 .. tn [SEP] -> the same with one random run of ``span`` tokens of t1..tn set to [MASK]
    (the whole inside when it is shorter than ``span`` + 1: a sentence must keep one visible token)."""
    inner = len(ids) - 2
    if span <= 0 or inner <= span:
        return list(ids)
    start = 1 + int(rng.integers(0, inner - span + 1))
    return ids[:start] + [mask_id] * span + ids[start + span:]


def mirror_views(ids: list[list[int]], span: int, mask_id: int, seed: int, epoch: int) -> tuple[list, list]:
    """Two independently masked views of every sequence, seeded by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch, 7])
    return ([mask_span(x, span, mask_id, rng) for x in ids], [mask_span(x, span, mask_id, rng) for x in ids])


class MirrorBiEncoder(BiEncoder):
    """The bi-encoder with a symmetric loss: each view finds its mirror among the other view's rows (every rank's,
    under torchrun)."""

    def loss_from_embeddings(self, a: Tensor, m: Tensor, b: PairBatch) -> Tensor:
        """a, m (n, dim): the two views of this rank's sentences."""
        a_all, offset = gather_rows(a)
        m_all, _ = gather_rows(m)
        keys, _ = gather_rows(b.d_keys)
        return (in_batch_loss(a, m_all, keys, self.scale, offset) + in_batch_loss(m, a_all, keys, self.scale,
                                                                                   offset)) / 2


def set_dropout(model: BertModel, p: float) -> None:
    """Every dropout of the encoder (hidden and attention probabilities) to ``p``, for training only: the
    saved config keeps the checkpoint's own values."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.p = p
        if hasattr(module, "attn_dropout"):
            module.attn_dropout = p


def mirror_bert(output_dir: str | os.PathLike[str], texts: list[str], dev: RetrievalData | None = None, *,
                model: str = DEFAULT_MODEL, pooling: str | None = None, scale: float = 25.0, span: int = 2,
                dropout: float | None = 0.1, max_length: int = 64, mini_batch_size: int | None = None,
                training: TrainConfig | None = None, resume: bool = False,
                overwrite: bool = False) -> EmbeddingTrainResult:
    """Self-supervised sentence-embedding tuning on raw ``texts``; keep the best by dev NDCG@10 when given.

    ``dropout``: the rate used while training (None: the checkpoint's own; Mirror-BERT needs some, and
    MosaicBERT-style recipes train with none). ``mini_batch_size``: GradCache, as in ``train_embeddings``.
    Under torchrun ``training.batch_size`` is the global batch (each view against every rank's other view).
    """
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(texts) < 2:
        raise ValueError(f"Mirror-BERT needs at least 2 distinct non-empty texts, got {len(texts)}")
    tcfg = training or TrainConfig(epochs=1, batch_size=64, lr=2e-5, warmup_ratio=0.1)
    tcfg = dataclasses.replace(tcfg, metric=tcfg.metric or "ndcg@10")
    tcfg.validate()
    dist = init_distributed(tcfg.device)
    rank_share(tcfg.batch_size, dist.world_size)  # an uneven global batch fails before any work
    out = Path(output_dir)
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite, OUTPUT_FILES)
    dist.barrier()
    base, enc = load_base(model, None, pooling)
    ids = enc.tokenizer.encode(texts, max_length=min(max_length, enc.max_length)).ids
    mask_id = enc.tokenizer.require_mask_id("Mirror-BERT's span masking")
    if dropout is not None:
        set_dropout(base, dropout)
    bi = MirrorBiEncoder(base, enc.sentence, scale, mini_batch_size=mini_batch_size)
    keys = list(range(len(ids)))
    log.info("Mirror-BERT from %s: %d sentences (max %d tokens), batch %d, span %d [MASK], dropout %s, scale %g",
             enc.name, len(ids), max_length, tcfg.batch_size, span,
             dropout if dropout is not None else "as in the checkpoint", scale)

    def batches(epoch: int) -> list[PairBatch]:
        a, m = mirror_views(ids, span, mask_id, tcfg.seed, epoch)
        return pair_batches(a, m, keys, tcfg.batch_size, tcfg.seed, epoch, rank=dist.rank, world=dist.world_size)

    return fit_biencoder(out, bi, enc, tcfg, batches, dev,
                         {"model": enc.name, "mirror": len(ids), "span": span, "dropout": dropout,
                          "max_length": max_length}, resume, dist)
