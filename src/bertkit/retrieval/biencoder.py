"""Bi-encoder training with in-batch negatives (multiple-negatives ranking loss, as sentence-transformers' MNRL).

Each batch holds n (query, positive document) pairs. Queries and documents go through the same encoder
(padding-free), are mean- or CLS-pooled and L2-normalised; the loss is cross-entropy over the scaled
cosine similarities ``scale * q_i . d_j``, the target of query i being its own document i: every other
document of the batch is a negative. A document that is the positive of two queries in one batch is
not a negative for either (its other copies are masked out).

The saved directory is an HF BertModel plus the sentence-transformers files (``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json``, a Normalize module), so both ``bertkit.load``
and ``sentence_transformers.SentenceTransformer`` load it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.encoder import Encoder, default_max_length, pool
from bertkit.hub import DEFAULT_MODEL, resolve_model_dir
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.model.weights import load_pretrained
from bertkit.retrieval.data import RetrievalData
from bertkit.retrieval.search import evaluate_retrieval
from bertkit.train.engine import TrainConfig, Trainer, TrainState
from bertkit.train.finetune import prepare_output_dir
from bertkit.utils.atomic import atomic_write_text

log = logging.getLogger("bertkit")


@dataclass
class PairBatch:
    """n (query, document) pairs, each side packed: ids (total_tokens,) with its Packing."""

    q_ids: Tensor
    q_packing: Packing
    d_ids: Tensor
    d_packing: Packing
    d_keys: Tensor  # (n,) document identity, to mask duplicates of a positive
    num_tokens: int
    num_units: int  # pairs

    def to(self, device: torch.device) -> PairBatch:
        if self.q_ids.device == device:
            return self
        move = lambda p: Packing(p.cu_seqlens.to(device), p.lengths, p.runs)  # noqa: E731
        return dataclasses.replace(self, q_ids=self.q_ids.to(device), q_packing=move(self.q_packing),
                                   d_ids=self.d_ids.to(device), d_packing=move(self.d_packing),
                                   d_keys=self.d_keys.to(device))


def pair_batches(q_ids: list[list[int]], d_ids: list[list[int]], d_keys: list[int], batch_size: int, seed: int,
                 epoch: int) -> list[PairBatch]:
    """Shuffled by (seed, epoch) into batches of ``batch_size`` pairs; a last batch of one pair is dropped
    (it would have no negative)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(q_ids))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        if len(idx) < 2:
            continue
        qs, ds = [q_ids[i] for i in idx], [d_ids[i] for i in idx]
        out.append(PairBatch(torch.tensor([t for x in qs for t in x]), Packing.from_lengths([len(x) for x in qs]),
                             torch.tensor([t for x in ds for t in x]), Packing.from_lengths([len(x) for x in ds]),
                             torch.tensor([d_keys[i] for i in idx]), sum(map(len, qs)) + sum(map(len, ds)),
                             len(idx)))
    return out


class BiEncoder(nn.Module):
    def __init__(self, encoder: BertModel, pooling: str = "mean", scale: float = 20.0) -> None:
        super().__init__()
        self.encoder, self.pooling, self.scale = encoder, pooling, scale
        if encoder.pooler is not None:  # sentence embeddings never use it; DDP must not wait for its gradient
            encoder.pooler.requires_grad_(False)

    def embed(self, ids: Tensor, packing: Packing) -> Tensor:
        """(total_tokens,) -> (n, hidden), unit rows."""
        return F.normalize(pool(self.encoder.forward_packed(ids, packing), packing, self.pooling).float(), dim=-1)

    def forward(self, b: PairBatch) -> Tensor:
        q, d = self.embed(b.q_ids, b.q_packing), self.embed(b.d_ids, b.d_packing)
        return in_batch_loss(q, d, b.d_keys, self.scale)


def in_batch_loss(q: Tensor, d: Tensor, d_keys: Tensor, scale: float) -> Tensor:
    """q, d (n, dim) unit rows, d_keys (n,) -> mean cross-entropy of each query against all documents."""
    scores = scale * (q @ d.T)  # (n, n)
    same = (d_keys[None, :] == d_keys[:, None]) & ~torch.eye(len(d_keys), dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(same, float("-inf"))  # a copy of my positive is not my negative
    return F.cross_entropy(scores, torch.arange(len(q), device=q.device))


def save_sentence_transformer(encoder: Encoder, directory: Path, pooling: str) -> None:
    """Our HF directory plus the files sentence-transformers reads: Transformer -> Pooling -> Normalize."""
    encoder.save_pretrained(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    atomic_write_text(directory / "modules.json", json.dumps(modules, indent=2) + "\n")
    atomic_write_text(directory / "sentence_bert_config.json",
                      json.dumps({"max_seq_length": encoder.max_length, "do_lower_case": False}, indent=2) + "\n")
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "2_Normalize").mkdir(exist_ok=True)
    atomic_write_text(directory / "1_Pooling" / "config.json", json.dumps({
        "word_embedding_dimension": encoder.model.config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n")


@dataclass
class EmbeddingTrainResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None


def train_embeddings(output_dir: str | os.PathLike[str], train: RetrievalData, dev: RetrievalData | None = None, *,
                     model: str = DEFAULT_MODEL, pooling: str = "mean", scale: float = 20.0,
                     max_length: int | None = None, training: TrainConfig | None = None, resume: bool = False,
                     overwrite: bool = False) -> EmbeddingTrainResult:
    """Fine-tune a bi-encoder on ``train``'s (query, relevant document) pairs; keep the best by dev NDCG@10."""
    tcfg = training or TrainConfig(epochs=1, batch_size=32, lr=2e-5, warmup_ratio=0.1)
    tcfg = dataclasses.replace(tcfg, metric=tcfg.metric or "ndcg@10")
    out = Path(output_dir)
    pairs = [(q, d) for q, rel in train.qrels.items() for d, r in rel.items() if r > 0]
    if len(pairs) < 2:
        raise ValueError(f"{train.source}: {len(pairs)} (query, relevant document) pairs; need at least 2")
    prepare_output_dir(out, resume, overwrite, ("config.json", "model.safetensors", "modules.json",
                                                "sentence_bert_config.json", "metrics.jsonl", "training_curve.png"))
    model_dir = resolve_model_dir(model)
    base, _ = load_pretrained(model_dir)
    enc = Encoder(base, WordPieceTokenizer.from_dir(model_dir),
                  max_length or default_max_length(model_dir, base.config.max_position_embeddings), str(model_dir))
    doc_index = {d: i for i, d in enumerate(sorted({d for _, d in pairs}))}
    q_tok = enc.tokenize([train.queries[q] for q, _ in pairs]).ids
    d_tok = enc.tokenize([train.docs[d] for _, d in pairs]).ids
    keys = [doc_index[d] for _, d in pairs]
    bi = BiEncoder(base, pooling, scale)
    log.info("training embeddings from %s on %s: %d pairs, batch %d (in-batch negatives), pooling %s, scale %g",
             model_dir.name, train.source, len(pairs), tcfg.batch_size, pooling, scale)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        return evaluate_retrieval(enc, dev, batch_size=64)

    trainer = Trainer(bi, tcfg, batches=lambda e: pair_batches(q_tok, d_tok, keys, tcfg.batch_size, tcfg.seed, e),
                      loss_fn=lambda m, b: m(b), output_dir=out, evaluate=evaluate if dev is not None else None,
                      on_best=lambda _m, _x: save_sentence_transformer(enc, out, pooling),
                      fingerprint={"model": str(model_dir), "pairs": len(pairs), "pooling": pooling, "scale": scale})
    t0 = time.perf_counter()
    state = trainer.fit(resume=resume)
    if dev is None:
        save_sentence_transformer(enc, out, pooling)
    best = state.history[[h["step"] for h in state.history].index(state.best_step)] if state.best_step else None
    log.info("embeddings trained in %.0f s; best dev %s", time.perf_counter() - t0, best)
    return EmbeddingTrainResult(out, state, best)
