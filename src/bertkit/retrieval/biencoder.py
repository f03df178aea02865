"""Bi-encoder training with in-batch negatives (multiple-negatives ranking loss, as sentence-transformers' MNRL).

Each batch holds n (query, positive document) pairs, optionally with h hard negatives per query.
Queries and documents go through the same encoder (padding-free) and the model's own sentence head
(pooling, any Dense modules, which train too) and are L2-normalised; the loss is cross-entropy over the
scaled cosine similarities ``scale * q_i . d_j``, the target of query i being its own document i: every
other document of the batch (the other positives and all hard negatives) is a negative. A document that
is the positive of query i is never a negative for query i, wherever else it appears in the batch (its
other copies are masked out).

Distilled sentence embedding: with a cross-encoder teacher, each query's scores over its group
(positive, h hard negatives) are also pulled towards the teacher's by a KL term,
``KL(softmax(teacher / T) || softmax(scale * q . d))``, so the bi-encoder learns the cross-encoder's
graded judgements, not just "this one, not those".

Queries and documents get their prompts (``query_prompt`` / ``doc_prompt``; default: the starting model's
own, as sentence-transformers' encode_query / encode_document pick them), and evaluation during training
embeds exactly as training does: same pooling, Dense modules and prompts.

The saved directory is an HF BertModel plus the sentence-transformers files (``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json``, Dense modules, a Normalize module, and the
prompts in ``config_sentence_transformers.json``), written by ``Encoder.save_pretrained``, so both
``bertkit.load`` and ``sentence_transformers.SentenceTransformer`` load it and embed as it was trained.

Under ``torchrun`` (DDP) ``batch_size`` is the global contrastive batch: each rank embeds its slice, and its
queries are scored against the documents of every rank (``gather_rows``, sentence-transformers'
``gather_across_devices``), so N ranks x B pairs train exactly as one process with N x B pairs.

GradCache (``mini_batch_size``; Gao et al. 2021, sentence-transformers' ``CachedMultipleNegativesRankingLoss``):
the batch is embedded in mini-batches without a graph, the loss and its gradient with respect to the embeddings
are computed on the whole batch, then each mini-batch is embedded again with a graph (same dropout masks) and
backpropagated with its cached gradient: the gradient of the whole batch in the memory of one mini-batch. It
combines with torchrun (the cached embeddings are gathered over the ranks as above).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_gather as all_gather_with_grad
from torch.nn.parallel import DistributedDataParallel

from bertkit.data.batch import DeviceBatch, pack
from bertkit.data.corpus import shard_batches
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.encoder import Encoder, default_max_length
from bertkit.errors import ConfigError
from bertkit.hub import DEFAULT_MODEL
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.model.directory import load_encoder
from bertkit.model.sentence import SentenceConfig
from bertkit.retrieval.data import RetrievalData
from bertkit.retrieval.search import evaluate_retrieval
from bertkit.train.distributed import DistInfo, init_distributed, rank_share
from bertkit.train.finetune import prepare_output_dir
from bertkit.train.trainer import TrainConfig, Trainer, TrainState

log = logging.getLogger("bertkit")
# what a run writes into its output directory (an existing one is refused unless resumed or overwritten)
OUTPUT_FILES = ("config.json", "model.safetensors", "modules.json", "sentence_bert_config.json",
                "config_sentence_transformers.json", "metrics.jsonl", "training_curve.png")


@dataclass
class PairBatch(DeviceBatch):
    """n (query, positive) pairs and n*h hard negatives, each side packed: ids (total_tokens,) with a Packing.

    Documents are the n positives then the hard negatives, query by query: d_keys (n + n*h,) holds each
    one's identity, to mask copies of a query's positive. teacher (n, 1 + h): a cross-encoder's scores of
    each query's group (positive first), for distillation.
    """

    q_ids: Tensor
    q_packing: Packing
    d_ids: Tensor
    d_packing: Packing
    d_keys: Tensor
    num_tokens: int
    num_units: int  # pairs
    teacher: Tensor | None = None


def pair_batches(q_ids: list[list[int]], d_ids: list[list[int]], d_keys: list[int], batch_size: int, seed: int,
                 epoch: int, negatives: list[list[list[int]]] | None = None, neg_keys: list[list[int]] | None = None,
                 teacher: np.ndarray | None = None, rank: int = 0, world: int = 1) -> list[PairBatch]:
    """Shuffled by (seed, epoch) into batches of ``batch_size`` pairs; a last batch of one pair without hard
    negatives is dropped (it would have no negative). ``negatives[i]``: pair i's h hard negatives (token
    lists), ``neg_keys[i]`` their identities; ``teacher`` (n_pairs, 1 + h) the cross-encoder's group scores.
    Under torchrun ``batch_size`` is the global batch and rank ``rank`` of ``world`` gets its slice of each."""
    order = np.random.default_rng([seed, epoch]).permutation(len(q_ids))
    if not negatives:  # a batch of one pair has no negative
        order = order[:len(order) - (len(order) % batch_size == 1)] if batch_size > 1 else order[:0]
    out = []
    for idx in shard_batches(order, batch_size, rank, world, drop_last=False):
        qs = [q_ids[i] for i in idx]
        ds = [d_ids[i] for i in idx] + ([x for i in idx for x in negatives[i]] if negatives else [])
        keys = [d_keys[i] for i in idx] + ([k for i in idx for k in neg_keys[i]] if neg_keys else [])
        (q, _, q_packing), (d, _, d_packing) = pack(qs), pack(ds)
        out.append(PairBatch(q, q_packing, d, d_packing, torch.tensor(keys), q_packing.total_tokens
                             + d_packing.total_tokens, len(idx),
                             None if teacher is None else torch.from_numpy(teacher[idx]).float()))
    return out


@dataclass
class Chunk:
    """One GradCache mini-batch of one side (queries or documents): ids (total_tokens,) with their Packing."""

    ids: Tensor
    packing: Packing
    prompt_length: int


def mini_batches(ids: Tensor, packing: Packing, size: int) -> list[tuple[Tensor, Packing]]:
    """A packed batch, ids (total_tokens,) -> consecutive packed batches of at most ``size`` sequences each."""
    out, start = [], 0
    for i in range(0, packing.batch_size, size):
        lengths = packing.lengths[i:i + size]
        out.append((ids[start:start + sum(lengths)], Packing.from_lengths(lengths, device=ids.device)))
        start += sum(lengths)
    return out


class BiEncoder(nn.Module):
    """The encoder and its sentence head (``sentence``: pooling, Dense modules, registered here so they train).

    prompt_lengths: (query, document) tokens pooling leaves out (the prompts, with include_prompt=False).
    mini_batch_size: GradCache's mini-batch (sequences embedded at once, see ``cached_loss``); None: the plain loss.
    """

    def __init__(self, encoder: BertModel, sentence: SentenceConfig | None = None, scale: float = 20.0,
                 distill_weight: float = 0.0, temperature: float = 1.0,
                 prompt_lengths: tuple[int, int] = (0, 0), mini_batch_size: int | None = None) -> None:
        super().__init__()
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size (GradCache) must be >= 1, got {mini_batch_size}")
        self.encoder, self.scale = encoder, scale
        self.sentence = sentence or SentenceConfig.defaults(encoder.config.hidden_size)
        self.dense = nn.ModuleList(self.sentence.dense)  # the same modules the saved model writes
        self.distill_weight, self.temperature, self.prompt_lengths = distill_weight, temperature, prompt_lengths
        self.mini_batch_size = mini_batch_size
        if encoder.pooler is not None:  # sentence embeddings never use it; DDP must not wait for its gradient
            encoder.pooler.requires_grad_(False)

    @property
    def pooling(self) -> tuple[str, ...]:
        return self.sentence.modes

    def embed(self, ids: Tensor, packing: Packing, prompt_length: int = 0) -> Tensor:
        """(total_tokens,) -> (n, dim), unit rows (the loss is on cosines, whatever the model saves)."""
        h = self.encoder.forward_packed(ids, packing)
        return F.normalize(self.sentence.embed(h, packing, prompt_length, normalize=False).float(), dim=-1)

    def forward(self, b: PairBatch | Chunk) -> Tensor:
        """The loss of a batch; for a GradCache ``Chunk``, its embeddings (n, dim) (re-embedded through here so
        that DDP's forward sees them)."""
        if isinstance(b, Chunk):
            return self.embed(b.ids, b.packing, b.prompt_length)
        q, d = self.embed(b.q_ids, b.q_packing, self.prompt_lengths[0]), \
            self.embed(b.d_ids, b.d_packing, self.prompt_lengths[1])
        return self.loss_from_embeddings(q, d, b)

    def loss_from_embeddings(self, q: Tensor, d: Tensor, b: PairBatch) -> Tensor:
        """This rank's queries q (n, dim) against the documents d (m, dim) of every rank (gathered under torchrun),
        plus the distillation term over each query's own group."""
        d_all, offset = gather_rows(d)
        keys, _ = gather_rows(b.d_keys)
        loss = in_batch_loss(q, d_all, keys, self.scale, offset)
        if b.teacher is not None and self.distill_weight > 0:
            loss = loss + self.distill_weight * distill_loss(self.scale * group_scores(q, d), b.teacher,
                                                             self.temperature)
        return loss


def in_batch_loss(q: Tensor, d: Tensor, d_keys: Tensor, scale: float, offset: int = 0) -> Tensor:
    """q (n, dim), d (m >= n, dim) unit rows, query i's positive being d[offset + i]; d_keys (m,) -> mean
    cross-entropy of each query against all m documents. ``offset``: where this rank's documents start among
    every rank's (``gather_rows``); 0 in one process, where the positives are the first n."""
    n = len(q)
    pos = torch.arange(offset, offset + n, device=q.device)
    scores = scale * (q @ d.T)  # (n, m)
    same = d_keys[None, :] == d_keys[pos, None]  # (n, m): copies of query i's positive
    same[torch.arange(n, device=q.device), pos] = False
    scores = scores.masked_fill(same, float("-inf"))  # a copy of my positive is not my negative
    return F.cross_entropy(scores, pos)


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """x (n, ...) of this rank -> (every rank's rows in rank order (sum of n, ...), where this rank's rows start).

    In one process: x itself and 0. Under torchrun the gather is differentiable (torch.distributed.nn's
    all_gather): its backward sums over the ranks the gradients that reach each rank's rows, so a document's
    gradient holds what every rank's queries sent it. Each rank's loss is its own queries' mean and the engine
    weights it by (its queries x ranks / all queries) before DDP averages, which makes the step's gradient the
    one of one process with the whole global batch (checked to 1e-5 by tests/train/test_ddp_trainers.py). Ranks
    may hold different n (the last batch of an epoch): rows are padded to the largest n for the collective.
    """
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x, 0
    size = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(tdist.get_world_size())]
    tdist.all_gather(sizes, size)
    n = [int(k) for k in sizes]
    padded = torch.cat([x, x.new_zeros((max(n) - len(x), *x.shape[1:]))])
    parts = all_gather_with_grad(padded)
    return torch.cat([part[:k] for part, k in zip(parts, n, strict=True)]), sum(n[:tdist.get_rank()])


class RandState:
    """The RNG state at one moment (CPU, and the device's on CUDA), to replay a forward's dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the RNG continues afterwards from where it was before the block."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def cached_loss(model: nn.Module, b: PairBatch) -> Tensor:
    """GradCache (Gao et al. 2021; sentence-transformers' CachedMultipleNegativesRankingLoss): the loss of a
    contrastive batch of any size in the activation memory of ``mini_batch_size`` sequences.

    1. every mini-batch of queries, then of documents, is embedded without a graph, its RNG state kept;
    2. the loss on the whole batch's embeddings q (n, dim), d (m, dim) (gathered over the ranks under torchrun)
       and its gradient with respect to them, which is cached;
    3. the loss comes back as a leaf whose backward embeds each mini-batch again, with a graph and its RNG state
       replayed (dropout draws the same masks), and backpropagates the cached gradient through it.

    ``model`` is the BiEncoder or DDP around it. Under DDP the mini-batches of step 3 go through DDP's forward, all
    but the last under ``no_sync``: their gradients add up locally and the last backward all-reduces the sum.

    Weights: the cached gradient is that of the loss summed over this rank's queries (n x the mean), and step 3
    scales it by the engine's weight / n. Under torchrun the documents then receive, from every rank, the gradient
    that rank's summed loss sends them, times the one factor (ranks / global queries) the engine's weights share:
    the plain path's gradient, whatever each rank's n.
    """
    bi = model.module if isinstance(model, DistributedDataParallel) else model
    size, device = bi.mini_batch_size, b.q_ids.device
    chunks = [Chunk(ids, packing, bi.prompt_lengths[0]) for ids, packing in mini_batches(b.q_ids, b.q_packing, size)]
    n_q = len(chunks)
    chunks += [Chunk(ids, packing, bi.prompt_lengths[1]) for ids, packing in mini_batches(b.d_ids, b.d_packing, size)]
    states, reps = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(RandState(device))
            reps.append(bi(c))
    q = torch.cat(reps[:n_q]).requires_grad_()
    d = torch.cat(reps[n_q:]).requires_grad_()
    n = len(q)
    loss = bi.loss_from_embeddings(q, d, b)
    (loss * n).backward()
    cached = [*q.grad.split([c.packing.batch_size for c in chunks[:n_q]]),
              *d.grad.split([c.packing.batch_size for c in chunks[n_q:]])]
    # the engine's autocast covers this call, not the backward that replays the mini-batches
    amp, amp_dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)

    def replay(weight: Tensor) -> None:
        with torch.enable_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            for i, (c, state, grad) in enumerate(zip(chunks, states, cached, strict=True)):
                last = i == len(chunks) - 1
                sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
                with sync, state.replay():
                    (model(c) * (grad * (weight / n))).sum().backward()

    out = loss.detach().requires_grad_()
    out.register_hook(replay)
    return out


def pair_loss(model: nn.Module, b: PairBatch) -> Tensor:
    """The engine's loss_fn: the plain loss through ``model`` (a BiEncoder or DDP around one), or GradCache's
    (``cached_loss``) when the BiEncoder has a ``mini_batch_size``."""
    bi = model.module if isinstance(model, DistributedDataParallel) else model
    return cached_loss(model, b) if bi.mini_batch_size else model(b)


def group_scores(q: Tensor, d: Tensor) -> Tensor:
    """q (n, dim), d (n + n*h, dim) laid out as in PairBatch -> (n, 1 + h): each query against its own
    positive and hard negatives."""
    n = len(q)
    h = (len(d) - n) // n
    group = torch.cat([d[:n, None], d[n:].view(n, h, -1)], dim=1)  # (n, 1 + h, dim)
    return torch.einsum("nd,ngd->ng", q, group)


def distill_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """student, teacher (n, g) scores of the same groups -> mean KL(softmax(teacher / T) || softmax(student))."""
    target = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(F.log_softmax(student.float(), dim=-1), target, log_target=True, reduction="batchmean")


@dataclass
class EmbeddingTrainResult:
    output_dir: Path
    state: TrainState
    dev: dict[str, float] | None


def load_base(model: str, max_length: int | None, pooling: str | Sequence[str] | None = None,
              query_prompt: str | None = None, doc_prompt: str | None = None) -> tuple[BertModel, Encoder]:
    """The starting encoder, and an Encoder around the same (trained in place) weights for tokenizing,
    evaluating and saving. Its sentence settings are the ones trained: the model's own, with ``pooling``
    and the prompts (None: the model's own "query" / "document" prompts) set, cosine similarity."""
    base, _, info = load_encoder(model, who="train-embeddings")
    model_dir = info.path
    enc = Encoder(base, WordPieceTokenizer.from_dir(info.weights_dir),
                  max_length or default_max_length(model_dir, base.config.max_tokens, info.weights_dir), str(model_dir))
    sentence = SentenceConfig.read(model_dir, base.config.hidden_size)
    if pooling is not None:
        sentence = sentence.with_pooling(pooling)
    prompts = {"query": sentence.role_prompt("query", prompt=query_prompt),
               "document": sentence.role_prompt("document", prompt=doc_prompt)}
    enc.sentence = dataclasses.replace(sentence, prompts={**sentence.prompts, **prompts}, similarity_fn_name="cosine",
                                       explicit=True)
    return base, enc


def prompt_lengths(enc: Encoder) -> tuple[int, int]:
    """Tokens pooling leaves out of queries and documents: their prompts', when the model pools without them."""
    out = []
    for role in ("query", "document"):
        prompt = enc.sentence.prompts[role]
        ids = enc.tokenize(enc.sentence.prepare([prompt])).ids[0] if prompt else []
        out.append(enc.sentence.prompt_length(ids, enc.tokenizer.special_ids) if prompt else 0)
    return out[0], out[1]


def fit_biencoder(out: Path, bi: BiEncoder, enc: Encoder, tcfg: TrainConfig, batches: Callable[[int], list[PairBatch]],
                  dev: RetrievalData | None, fingerprint: dict[str, Any], resume: bool,
                  dist: DistInfo | None = None) -> EmbeddingTrainResult:
    """Train with the engine, keeping the best by dev NDCG@10 (or the last, without dev data). ``tcfg.batch_size``
    is the global batch; ``batches`` gives this rank's slice of each (``dist``: from ``init_distributed``)."""
    dist = dist or init_distributed(tcfg.device)

    def evaluate(_m: nn.Module) -> dict[str, float]:
        return evaluate_retrieval(enc, dev, batch_size=64)

    enc.sentence = bi.sentence  # dev evaluation and the saved model embed exactly as trained
    rank_tcfg = dataclasses.replace(tcfg, batch_size=rank_share(tcfg.batch_size, dist.world_size),
                                    device=str(dist.device))
    trainer = Trainer(bi, rank_tcfg, batches=batches, loss_fn=pair_loss, output_dir=out,
                      evaluate=evaluate if dev is not None else None,
                      on_best=lambda _m, _x: enc.save_pretrained(out),
                      fingerprint={**fingerprint, "pooling": "+".join(bi.pooling), "scale": bi.scale,
                                   "prompts": [enc.sentence.prompts["query"], enc.sentence.prompts["document"]],
                                   "world_size": dist.world_size})
    t0 = time.perf_counter()
    state = trainer.fit(resume=resume)
    if dev is None and dist.is_main:
        enc.save_pretrained(out)
    dist.barrier()
    best = state.history[[h["step"] for h in state.history].index(state.best_step)] if state.best_step else None
    log.info("embeddings trained in %.0f s; best dev %s", time.perf_counter() - t0, best)
    return EmbeddingTrainResult(out, state, best)


class PairScorer(Protocol):
    def score_pairs(self, queries: list[str], docs: list[str]) -> np.ndarray: ...  # (n,) for pairs i


def train_embeddings(output_dir: str | os.PathLike[str], train: RetrievalData, dev: RetrievalData | None = None, *,
                     model: str = DEFAULT_MODEL, pooling: str | Sequence[str] | None = None, scale: float = 20.0,
                     max_length: int | None = None, query_prompt: str | None = None, doc_prompt: str | None = None,
                     negatives: dict[str, list[str]] | None = None,
                     teacher: PairScorer | None = None, distill_weight: float = 1.0, temperature: float = 1.0,
                     mini_batch_size: int | None = None, training: TrainConfig | None = None, resume: bool = False,
                     overwrite: bool = False) -> EmbeddingTrainResult:
    """Fine-tune a bi-encoder on ``train``'s (query, relevant document) pairs; keep the best by dev NDCG@10.

    ``pooling`` (None: the starting model's own), ``query_prompt`` / ``doc_prompt`` (None: the model's own
    "query" / "document" prompts; "" for none) are trained, used by dev evaluation and saved.

    ``negatives``: query id -> hard negative document ids (the same number for every query, e.g. from
    ``mine_hard_negatives``). ``teacher``: a cross-encoder whose scores of each (positive, negatives)
    group the bi-encoder is distilled towards, with weight ``distill_weight``; it needs ``negatives``.

    ``mini_batch_size``: GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss): embed
    ``training.batch_size`` pairs in mini-batches of this many sequences, the same gradient in bounded memory.
    Under torchrun ``training.batch_size`` is the global batch; every rank scores its queries against all of it.
    """
    tcfg = training or TrainConfig(epochs=1, batch_size=32, lr=2e-5, warmup_ratio=0.1)
    tcfg = dataclasses.replace(tcfg, metric=tcfg.metric or "ndcg@10")
    tcfg.validate()
    dist = init_distributed(tcfg.device)
    rank_share(tcfg.batch_size, dist.world_size)  # an uneven global batch fails before any work
    out = Path(output_dir)
    pairs = [(q, d) for q, rel in train.qrels.items() for d, r in rel.items() if r > 0]
    if len(pairs) < 2:
        raise ValueError(f"{train.source}: {len(pairs)} (query, relevant document) pairs; need at least 2")
    if teacher is not None and not negatives:
        raise ValueError("distillation from a cross-encoder needs hard negatives (its scores are over "
                         "each query's positive and negatives)")
    negs = None
    if negatives:
        pairs, negs = _check_negatives(negatives, pairs, train)
    if dist.is_main:
        prepare_output_dir(out, resume, overwrite, OUTPUT_FILES)
    dist.barrier()
    base, enc = load_base(model, max_length, pooling, query_prompt, doc_prompt)
    qp, dp = enc.sentence.prompts["query"], enc.sentence.prompts["document"]
    doc_index = {d: i for i, d in enumerate(sorted(train.docs))}
    q_tok = enc.tokenize(enc.sentence.prepare([train.queries[q] for q, _ in pairs], qp)).ids
    d_tok = enc.tokenize(enc.sentence.prepare([train.docs[d] for _, d in pairs], dp)).ids
    keys = [doc_index[d] for _, d in pairs]
    n_tok = n_keys = scores = None
    if negs:
        flat = enc.tokenize(enc.sentence.prepare([train.docs[d] for row in negs for d in row], dp)).ids
        h = len(negs[0])
        n_tok = [flat[i * h:(i + 1) * h] for i in range(len(negs))]
        n_keys = [[doc_index[d] for d in row] for row in negs]
    if teacher is not None:
        t0 = time.perf_counter()
        groups = [(q, [pos, *row]) for (q, pos), row in zip(pairs, negs, strict=True)]
        scores = teacher.score_pairs([train.queries[q] for q, ds in groups for _ in ds],  # one length-sorted pass
                                     [train.docs[d] for _, ds in groups for d in ds])
        scores = np.asarray(scores, dtype=np.float32).reshape(len(groups), -1)  # (pairs, 1 + h)
        log.info("teacher scored %d groups of %d in %.0f s", len(pairs), scores.shape[1], time.perf_counter() - t0)
    bi = BiEncoder(base, enc.sentence, scale, distill_weight if teacher is not None else 0.0, temperature,
                   prompt_lengths(enc), mini_batch_size)
    log.info("training embeddings from %s on %s: %d pairs, batch %d (in-batch negatives%s%s%s), pooling %s%s, "
             "prompts %r / %r, scale %g", enc.name, train.source, len(pairs), tcfg.batch_size,
             f" + {len(negs[0])} hard negatives each" if negs else "",
             f" across {dist.world_size} ranks" if dist.world_size > 1 else "",
             f", distilled from a cross-encoder, weight {distill_weight}" if teacher is not None else "",
             "+".join(bi.pooling), f" + {len(bi.dense)} Dense" if len(bi.dense) else "", qp, dp, scale)
    if mini_batch_size:
        log.info("GradCache: embedding in mini-batches of %d sequences", mini_batch_size)
    return fit_biencoder(
        out, bi, enc, tcfg, lambda e: pair_batches(q_tok, d_tok, keys, tcfg.batch_size, tcfg.seed, e, n_tok, n_keys,
                                                   scores, dist.rank, dist.world_size),
        dev, {"model": enc.name, "pairs": len(pairs), "negatives": len(negs[0]) if negs else 0,
              "teacher": teacher is not None}, resume, dist)


def _check_negatives(negatives: dict[str, list[str]], pairs: list[tuple[str, str]],
                     train: RetrievalData) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The pairs whose query has the full number of hard negatives (the most any query has), and those
    negatives; the others are left out with a warning (a retriever can find too few non-relevant documents)."""
    h = max((len(v) for v in negatives.values()), default=0)
    if h == 0:
        raise ValueError("hard negatives: every list is empty")
    for q, row in negatives.items():
        unknown = [d for d in row if d not in train.docs]
        if unknown:
            raise ValueError(f"hard negatives of query {q!r} name unknown documents: {', '.join(unknown[:5])}")
    kept = [(q, d) for q, d in pairs if len(negatives.get(q, ())) == h]
    if len(kept) < len(pairs):
        log.warning("hard negatives: %d of %d pairs left out, their query has fewer than %d", len(pairs) - len(kept),
                    len(pairs), h)
    if len(kept) < 2:
        raise ValueError(f"hard negatives: only {len(kept)} pairs have {h} of them; need at least 2")
    return kept, [negatives[q] for q, _ in kept]
