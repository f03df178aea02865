"""Cross-encoder re-ranking: a pair classifier scores (query, document) -> relevance, trained on mined hard negatives.

A bi-encoder (any ``Encoder``) retrieves cheaply; the cross-encoder then reads query and document together,
``[CLS] query [SEP] document [SEP]`` with token types 0/1, and re-orders the first stage's top k. Pairs are
truncated longest-first to ``max_length`` (as transformers and sentence-transformers' CrossEncoder do), so a
query shorter than half of ``max_length`` is never cut: the document loses its tail.

Training groups: for each (query, relevant document) one group of 1 + n pairs, the positive first, then the n
hard negatives the retriever ranks highest among the documents not judged relevant (no skipping of rank-1
false negatives: the judgements are taken as complete). Losses, over a group's logits s (1 + n,):
  ``listwise``  cross-entropy of softmax(s) with the positive as target (the default)
  ``binary``    BCE-with-logits of each pair, label 1 for the positive, 0 for the negatives, averaged

The saved directory is transformers' ``BertForSequenceClassification`` with one label (``problem_type``
regression, so bertkit's TaskModel reads it too), loadable by ``AutoModelForSequenceClassification`` and
sentence-transformers' ``CrossEncoder``; scores are the raw logits (CrossEncoder applies a sigmoid, which
keeps the order).

Fusion: ``logit + w * cosine`` (the first stage's score) often beats either alone, the two models erring on
different queries; ``evaluate_reranking`` reports it for given weights, and ``bertkit train-reranker`` picks
w on dev from ``FUSION_WEIGHTS``.

Under ``torchrun`` ``train_reranker`` runs with DDP: ``batch_size`` groups is the global batch, each rank trains on
its slice of every batch; rank 0 mines the hard negatives (cached in the output directory, which the other ranks
then read) and writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.data.batch import DeviceBatch, pack
from bertkit.data.corpus import shard_batches
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import Encoder, pick_device
from bertkit.errors import CheckpointError
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.attention import Packing
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.families import family_of
from bertkit.model.heads import SequenceClassifier, strip_task_keys
from bertkit.retrieval.data import RetrievalData
from bertkit.retrieval.metrics import evaluate_run
from bertkit.retrieval.search import embed_side, mine_hard_negatives, retrieve, retrieve_scored
from bertkit.train.distributed import init_distributed, rank_share
from bertkit.train.finetune import pooler_unused, prepare_output_dir
from bertkit.train.trainer import TrainConfig, Trainer, TrainState, pick_precision
from bertkit.utils.atomic import atomic_write_text
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

LOSSES = ("listwise", "binary")
CONFIG_FILE = "reranker_config.json"
NEGATIVES_FILE = "hard_negatives.json"
DEFAULT_MAX_LENGTH = 256
# Weights of the first stage's cosine in score fusion; 20 is the bi-encoder's training scale, making it logit-like.
FUSION_WEIGHTS = (5.0, 10.0, 20.0, 40.0, 80.0)


# ---- losses ---------------------------------------------------------------------------------------
def listwise_loss(scores: Tensor) -> Tensor:
    """scores (queries, 1 + n), positive in column 0 -> mean cross-entropy of each row's softmax."""
    return F.cross_entropy(scores.float(), torch.zeros(len(scores), dtype=torch.long, device=scores.device))


def binary_loss(scores: Tensor) -> Tensor:
    """scores (queries, 1 + n), positive in column 0 -> mean BCE-with-logits over all pairs (labels 1, 0, ..., 0)."""
    labels = torch.zeros_like(scores, dtype=torch.float32)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores.float(), labels)


def group_loss(name: str, scores: Tensor) -> Tensor:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return listwise_loss(scores) if name == "listwise" else binary_loss(scores)


# ---- training batches -----------------------------------------------------------------------------
@dataclass
class GroupBatch(DeviceBatch):
    """Groups of 1 + n (query, document) pairs, packed longest first into ids (total_tokens,)."""

    ids: Tensor
    type_ids: Tensor
    packing: Packing
    unsort: Tensor  # (pairs,): packed position of each pair in group-major order
    group_size: int
    num_tokens: int
    num_units: int  # groups: the loss is a mean over them


def group_batches(ids: list[list[int]], type_ids: list[list[int]], group_size: int, batch_size: int, seed: int,
                  epoch: int, rank: int = 0, world: int = 1) -> list[GroupBatch]:
    """Pairs stored group-major (group g is pairs g*size .. g*size+size-1) -> shuffled batches of groups; under
    torchrun ``batch_size`` is the global batch and each rank gets its slice of every one (``shard_batches``).

    Inside a batch the pairs are sorted by length, so equal lengths (all the truncated ones) form runs that the
    unpadded attention computes as one batched matmul.
    """
    n_groups = len(ids) // group_size
    order = np.random.default_rng([seed, epoch]).permutation(n_groups)
    out = []
    for groups in shard_batches(order, batch_size, rank, world, drop_last=False):
        pairs = np.array([g * group_size + j for g in groups for j in range(group_size)])
        lengths = np.array([len(ids[i]) for i in pairs])
        by_len = np.argsort(-lengths, kind="stable")
        unsort = np.empty_like(by_len)
        unsort[by_len] = np.arange(len(by_len))
        packed = pairs[by_len]
        flat, types, packing = pack([ids[i] for i in packed], [type_ids[i] for i in packed])
        out.append(GroupBatch(flat, types, packing, torch.from_numpy(unsort), group_size, packing.total_tokens,
                              len(pairs) // group_size))
    return out


def batch_loss(head: torch.nn.Module, b: GroupBatch, loss: str) -> Tensor:
    logits = head(b.ids, b.packing, b.type_ids)[:, 0]  # (pairs,) in packed order
    return group_loss(loss, logits[b.unsort].view(-1, b.group_size))  # (groups, 1 + n), positive first


# ---- inference ------------------------------------------------------------------------------------
def _autocast_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return pick_precision("auto", device)  # bf16 on CUDA, fp32 on CPU: the training engine's default
    if dtype in ("bf16", torch.bfloat16):
        return torch.bfloat16
    if dtype in ("fp32", torch.float32):
        return None
    raise ValueError(f"dtype must be None, 'auto', 'fp32' or 'bf16', got {dtype!r}")


class Reranker:
    """A cross-encoder: ``score(query, docs)`` -> logits, ``rank(query, docs)`` -> [(index, score)] best first."""

    def __init__(self, head: SequenceClassifier, tokenizer: Tokenizer, max_length: int,
                 dtype: str | torch.dtype | None = None, directory: Path | None = None) -> None:
        if head.num_labels != 1:
            raise ValueError(f"a reranker has one output, this head has {head.num_labels}")
        self.head = head
        self.tokenizer = tokenizer
        self.max_length = min(max_length, head.encoder.config.max_position_embeddings)
        self.dtype = dtype
        self.directory = directory
        self.fusion_weight: float | None = None  # the dev-chosen weight of the first stage's score, if any
        self._enc = Encoder(head.encoder, tokenizer, self.max_length)  # its length-sorted batching and paths

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, path: str = "unpadded") -> Reranker:
        """Load a saved reranker (ours, or any one-label BertForSequenceClassification directory).

        dtype: None or "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16".
        """
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"{d}: not a directory")
        dev = pick_device(device)
        if dev.type == "cpu":
            tune_allocator()
        encoder, heads, info = load_encoder(d, path=path, who="a reranker")
        labels = encoder.config.extra.get("id2label") or {"0": "LABEL_0"}
        if len(labels) != 1:
            raise CheckpointError(f"{d}: a reranker has one output label, this model has {len(labels)}")
        if encoder.pooler is None and family_of(encoder.config).sequence.uses_pooler:
            raise CheckpointError(f"{d}: no pooler weights; BertForSequenceClassification needs them")
        strip_task_keys(encoder.config)
        head = SequenceClassifier(encoder, 1, "regression")
        head.load_head_state(heads, source=str(d))
        meta = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8")) if (d / CONFIG_FILE).is_file() else {}
        r = cls(head.to(dev).eval(), Tokenizer.from_dir(info.weights_dir),
                int(meta.get("max_length", DEFAULT_MAX_LENGTH)), dtype, d)
        r.fusion_weight = meta.get("fusion_weight")
        return r

    def save_pretrained(self, directory: str | os.PathLike[str], **meta: object) -> Path:
        """config.json + model.safetensors (HF layout), tokenizer files, and ``reranker_config.json``."""
        d = self.head.save_pretrained(directory, {0: "relevance"})
        self.tokenizer.save(d)
        tok_cfg = d / "tokenizer_config.json"  # so that transformers/CrossEncoder truncate where we do
        cfg = json.loads(tok_cfg.read_text(encoding="utf-8")) if tok_cfg.is_file() else {}
        atomic_write_text(tok_cfg, json.dumps({**cfg, "model_max_length": self.max_length}, indent=2) + "\n")
        kept = {"fusion_weight": self.fusion_weight} if self.fusion_weight is not None else {}
        atomic_write_text(d / CONFIG_FILE, json.dumps({"max_length": self.max_length, **kept, **meta}, indent=2) + "\n")
        return d

    @property
    def device(self) -> torch.device:
        return self._enc.device

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits of the pairs (queries[i], docs[i]), float32 (n,), in input order; batched, padding-free."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        out = np.zeros(len(docs), dtype=np.float32)
        if not len(docs):
            return out
        batch = self.tokenizer.encode(list(queries), list(docs), self.max_length)
        if batch.n_truncated:  # expected for long documents: not worth a warning per call
            log.debug("%d of %d pairs truncated to %d tokens", batch.n_truncated, len(docs), self.max_length)
        amp = _autocast_dtype(self.dtype, self.device)
        # A disabled autocast would switch off the training engine's own (dev evaluation runs inside it).
        cast = torch.autocast(self.device.type, dtype=amp) if amp is not None else nullcontext()
        was_training = self.head.training
        self.head.eval()
        try:
            with torch.inference_mode(), cast:
                for idx, ids, types, packing in self._enc._batches(batch, batch_size):
                    h = self._enc._hidden(ids, types, packing)  # (total_tokens, hidden)
                    logits = self.head.logits_from_states(h, packing)  # (pairs, 1)
                    out[idx] = logits[:, 0].float().cpu().numpy()
        finally:
            self.head.train(was_training)
        return out

    def score(self, query: str, docs: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Relevance logits of each document for the query, float32 (len(docs),); higher is more relevant."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("the query is empty")
        if isinstance(docs, str):
            raise TypeError("docs must be a list of texts; wrap a single document in a list")
        if not len(docs):
            raise ValueError("no documents to score: docs is empty")
        return self.score_pairs([query] * len(docs), docs, batch_size)

    def rank(self, query: str, docs: Sequence[str], top_k: int | None = None, batch_size: int = 32,
             first_stage_scores: Sequence[float] | None = None,
             fusion_weight: float | None = None) -> list[tuple[int, float]]:
        """(index into docs, score) best first; ties keep input order. ``top_k`` keeps the first k.

        With ``first_stage_scores`` (the retriever's cosines of docs) the score is logit + w x cosine, w being
        ``fusion_weight`` or else the weight saved with the model (chosen on dev by ``bertkit train-reranker``).
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        scores = self.score(query, docs, batch_size)
        if first_stage_scores is not None:
            w = fusion_weight if fusion_weight is not None else self.fusion_weight
            if w is None:
                raise ValueError("first_stage_scores given but no fusion_weight (none was saved with the model)")
            if len(first_stage_scores) != len(docs):
                raise ValueError(f"{len(first_stage_scores)} first-stage scores for {len(docs)} documents")
            scores = scores + w * np.asarray(first_stage_scores, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), float(scores[i])) for i in order]


def candidate_logits(reranker: Reranker, data: RetrievalData, run: dict[str, list[str]], top: int,
                     batch_size: int = 32) -> dict[str, np.ndarray]:
    """Reranker logits of each query's first ``top`` documents, all pairs in one length-sorted pass."""
    qs = [q for q in data.queries if run.get(q)]
    scores = reranker.score_pairs([data.queries[q] for q in qs for _ in run[q][:top]],
                                  [data.docs[d] for q in qs for d in run[q][:top]], batch_size)
    bounds = np.cumsum([0] + [len(run[q][:top]) for q in qs])
    return {q: scores[bounds[i]:bounds[i + 1]] for i, q in enumerate(qs)}


def order_run(run: dict[str, list[str]], logits: dict[str, np.ndarray], top: int,
              first_stage_scores: dict[str, list[float]] | None = None, fusion_weight: float = 0.0
              ) -> dict[str, list[str]]:
    """Each query's first ``top`` documents sorted by ``logit + fusion_weight * first-stage score``; the first
    stage's tail follows unchanged (so Recall@100 stays measurable when ``top`` < 100)."""
    if fusion_weight and first_stage_scores is None:
        raise ValueError("fusion_weight needs the first stage's scores")
    out = {}
    for q, s in logits.items():
        head = run[q][:top]
        if fusion_weight:
            s = s + fusion_weight * np.asarray(first_stage_scores[q][:len(head)], dtype=np.float32)
        out[q] = [head[i] for i in np.argsort(-s, kind="stable")] + list(run[q][top:])
    return out


def rerank_run(reranker: Reranker, data: RetrievalData, first_stage_run: dict[str, list[str]], top: int,
               batch_size: int = 32, first_stage_scores: dict[str, list[float]] | None = None,
               fusion_weight: float = 0.0) -> dict[str, list[str]]:
    """Re-order each query's first ``top`` documents by the reranker (optionally fused with the first stage's
    scores, see ``order_run``); the rest of the first-stage ranking follows unchanged."""
    return order_run(first_stage_run, candidate_logits(reranker, data, first_stage_run, top, batch_size), top,
                     first_stage_scores, fusion_weight)


def evaluate_reranking(retriever: Encoder, reranker: Reranker, data: RetrievalData, top: int = 50,
                       first_stage: tuple[dict[str, list[str]], dict[str, list[float]]] | None = None,
                       batch_size: int = 32, fusion_weights: Sequence[float] = ()) -> dict:
    """NDCG@10, MRR@10, Recall@1/10/100 of the retriever alone (``first_stage``), with its top ``top`` re-ranked
    (``reranked``) and, for each of ``fusion_weights``, re-ranked by logit + weight x cosine (``fused``).

    ``first_stage``: (run, scores) from ``retrieve_scored`` at depth >= max(100, top), to share its cost.
    """
    run, scores = first_stage or retrieve_scored(retriever, data, max(100, top))
    logits = candidate_logits(reranker, data, run, top, batch_size)
    out: dict = {"top": top, "first_stage": evaluate_run(run, data.qrels),
                 "reranked": evaluate_run(order_run(run, logits, top), data.qrels)}
    if fusion_weights:
        out["fused"] = {str(w): evaluate_run(order_run(run, logits, top, scores, w), data.qrels)
                        for w in fusion_weights}
    return out


# ---- training -------------------------------------------------------------------------------------
@dataclass
class RerankerTrainResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None  # the best eval record (re-ranking the retriever's top ``dev_top``)
    doc_vectors: np.ndarray | None = None  # the retriever's vectors of train.docs (None: negatives were cached)


def _mine_or_reuse(out: Path, resume: bool, key: dict, retriever: str, train: RetrievalData,
                   dev: RetrievalData | None, negatives: int, mine_top: int, seed: int,
                   dev_depth: int) -> tuple[dict[str, list[str]], dict[str, list[str]] | None, np.ndarray | None]:
    """Hard negatives of train, the first-stage run of dev (cached in the output dir for ``resume``) and the
    retriever's document vectors (None when the cache was used)."""
    f = out / NEGATIVES_FILE
    if resume and f.is_file():
        cached = json.loads(f.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            log.info("reusing the hard negatives in %s", f)
            return cached["train"], cached.get("dev"), None
    t0 = time.perf_counter()
    enc = Encoder.from_pretrained(retriever)
    doc_vecs = embed_side(enc, [train.docs[d] for d in train.docs], "document")
    negs = mine_hard_negatives(enc, train, negatives, mine_top, seed, doc_vectors=doc_vecs)
    dev_run = None
    if dev is not None:  # same collection: reuse the document vectors
        same = list(dev.docs) == list(train.docs)
        dev_run = retrieve(enc, dev, dev_depth, doc_vecs if same else None)
    log.info("mined %d hard negatives for %d queries with %s in %.0f s", negatives, len(negs), retriever,
             time.perf_counter() - t0)
    atomic_write_text(f, json.dumps({"key": key, "train": negs, "dev": dev_run}) + "\n")
    return negs, dev_run, doc_vecs


def train_reranker(output_dir: str | os.PathLike[str], train: RetrievalData, dev: RetrievalData | None = None, *,
                   model: str = DEFAULT_MODEL, retriever: str = DEFAULT_MODEL, loss: str = "listwise",
                   negatives: int = 3, mine_top: int = 50, max_length: int = DEFAULT_MAX_LENGTH,
                   dev_top: int = 20, training: TrainConfig | None = None, resume: bool = False,
                   overwrite: bool = False) -> RerankerTrainResult:
    """Train a cross-encoder on ``train``'s queries, each relevant document against ``negatives`` hard negatives
    mined with ``retriever``; keep the best by dev NDCG@10 of re-ranking the retriever's top ``dev_top``.

    ``training.batch_size`` counts queries (groups): a batch holds batch_size x (1 + negatives) pairs.
    """
    if loss not in LOSSES:  # fail before any work
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    tcfg = training or TrainConfig(epochs=2, batch_size=4, lr=1.5e-4, warmup_ratio=0.1)
    tcfg = dataclasses.replace(tcfg, metric=tcfg.metric or "ndcg@10")
    tcfg.validate()
    dist = init_distributed(tcfg.device)
    per_rank = rank_share(tcfg.batch_size, dist.world_size)  # an uneven global batch fails before any work
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    if len(train.docs) < negatives + 1:
        raise ValueError(f"{train.source}: {len(train.docs)} documents; {negatives} negatives need at least "
                         f"{negatives + 1}")
    out = Path(output_dir)
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite, ("config.json", "model.safetensors", CONFIG_FILE, NEGATIVES_FILE,
                                                    "metrics.jsonl", "training_curve.png"))
    model_dir, retriever_dir = inspect_model_dir(model).path, str(inspect_model_dir(retriever).path)
    key = {"retriever": retriever_dir, "negatives": negatives, "mine_top": mine_top, "seed": tcfg.seed,
           "train": sorted(train.qrels), "dev": sorted(dev.qrels) if dev is not None else None, "dev_top": dev_top}
    if dist.is_main:  # rank 0 mines and caches; the others read its file (doc_vecs stays None there)
        negs, dev_run, doc_vecs = _mine_or_reuse(out, resume, key, retriever_dir, train, dev, negatives, mine_top,
                                                 tcfg.seed, max(100, dev_top))
    dist.barrier()
    if not dist.is_main:
        negs, dev_run, doc_vecs = _mine_or_reuse(out, True, key, retriever_dir, train, dev, negatives, mine_top,
                                                 tcfg.seed, max(100, dev_top))

    # One group per (query, relevant document), positive first; queries short of negatives are left out.
    groups = [(q, [d] + negs[q]) for q in sorted(train.qrels) for d, r in train.qrels[q].items()
              if r > 0 and len(negs[q]) == negatives]
    skipped = sum(1 for q in train.qrels if len(negs[q]) < negatives)
    if skipped:
        log.warning("%d queries have fewer than %d non-relevant documents in the retriever's top %d: left out",
                    skipped, negatives, mine_top)
    if not groups:
        raise ValueError(f"{train.source}: no (query, relevant document) pair to train on")

    torch.manual_seed(tcfg.seed)  # the classifier's (and a missing pooler's) initial weights
    base, _, info = load_encoder(model_dir, who="train-reranker")
    strip_task_keys(base.config)
    if base.pooler is None and family_of(base.config).sequence.uses_pooler:
        log.info("%s has no pooler: a new one is initialised", model)
    head = SequenceClassifier(base, 1, "regression")
    tok = Tokenizer.from_dir(info.weights_dir)
    reranker = Reranker(head, tok, max_length, dtype="fp32")  # dev eval runs inside the engine's autocast
    g = 1 + negatives
    pairs = tok.encode([train.queries[q] for q, ds in groups for _ in ds],
                       [train.docs[d] for _, ds in groups for d in ds], reranker.max_length)
    log.info("training a reranker from %s on %s: %d groups of 1 positive + %d hard negatives (%s loss), "
             "%d of %d pairs truncated to %d tokens", model, train.source, len(groups), negatives, loss,
             pairs.n_truncated, len(pairs.ids), reranker.max_length)
    meta = {"loss": loss, "negatives": negatives, "model": str(model_dir), "retriever": retriever_dir}

    def evaluate(_m: torch.nn.Module) -> dict[str, float]:
        assert dev is not None and dev_run is not None
        return evaluate_run(rerank_run(reranker, dev, dev_run, dev_top, batch_size=64), dev.qrels)

    if dev is not None:
        assert dev_run is not None
        log.info("dev first stage (%s): %s", Path(retriever_dir).name,
                 ", ".join(f"{k}={v:.4f}" for k, v in evaluate_run(dev_run, dev.qrels).items() if k != "queries"))
    trainer = Trainer(head, dataclasses.replace(tcfg, batch_size=per_rank, device=str(dist.device)),
                      batches=lambda e: group_batches(pairs.ids, pairs.type_ids, g, tcfg.batch_size, tcfg.seed, e,
                                                      dist.rank, dist.world_size),
                      loss_fn=lambda m, b: batch_loss(m, b, loss), output_dir=out,
                      evaluate=evaluate if dev is not None else None,
                      on_best=lambda _m, _x: reranker.save_pretrained(out, **meta),
                      fingerprint={**meta, "groups": len(groups), "max_length": reranker.max_length,
                                   "dev_top": dev_top, "world_size": dist.world_size},
                      find_unused_parameters=pooler_unused(head))
    t0 = time.perf_counter()
    state = trainer.fit(resume=resume)
    if dev is None and dist.is_main:
        reranker.save_pretrained(out, **meta)  # no dev set to pick a best model: keep the last one
    dist.barrier()
    best = state.history[[h["step"] for h in state.history].index(state.best_step)] if state.best_step else None
    log.info("reranker trained in %.0f s; best dev %s", time.perf_counter() - t0, best)
    return RerankerTrainResult(out, state, best, doc_vecs)
