"""BERTScore (Zhang et al. 2020): text similarity by greedy matching of contextual token embeddings.

For a candidate x and reference y, with L2-normalized token vectors from hidden layer ``layer``:

    R = mean over reference tokens of  max_{x_i in x} x_i . y_j
    P = mean over candidate tokens of  max_{y_j in y} x_i . y_j
    F = 2 P R / (P + R)

[CLS] and [SEP] take no part: they are neither matched nor matched against (the ``bert_score`` package
keeps them in the similarity matrix and only zeroes their weights; here they are dropped outright).

``idf=True`` weights the means by idf(w) = -log((df(w) + 1) / (M + 1)), df counted over the M references
(the ``bert_score`` package's plus-one smoothing; a token no reference contains gets log(M + 1)). A token
in every reference gets 0; a text whose tokens all weigh 0 (e.g. any text when M = 1) falls back to the
plain mean.

Baseline rescaling maps s to (s - b) / (1 - b) per metric, so that unrelated texts score around 0. The
official per-model baseline files are not bundled (nor downloaded): pass your own (b_P, b_R, b_F), e.g.
from ``estimate_baseline``, which applies the paper's recipe (mean score of random mismatched pairs) to
texts you supply.

Of the model's sentence-transformers settings only its text preparation applies (``do_lower_case``);
pooling, Dense and Normalize act after the token states BERTScore reads, and a prompt would be matched as
if it were text.

A candidate or reference without tokens besides [CLS]/[SEP] (an empty or whitespace-only text) scores
P = R = F = 0 before rescaling, with a warning naming the pair indices, as in the ``bert_score`` package.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bertkit.encoder import Encoder
from bertkit.hub import DEFAULT_MODEL
from bertkit.loader import load
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel

log = logging.getLogger("bertkit")


@dataclass
class BertScoreResult:
    precision: np.ndarray  # (n_pairs,) float64
    recall: np.ndarray  # (n_pairs,)
    f1: np.ndarray  # (n_pairs,)

    @property
    def mean_precision(self) -> float:
        return float(self.precision.mean())

    @property
    def mean_recall(self) -> float:
        return float(self.recall.mean())

    @property
    def mean_f1(self) -> float:
        return float(self.f1.mean())


# ---- contextual embeddings from any layer ------------------------------------------------------
def layer_states(model: BertModel, input_ids: Tensor, packing: Packing, token_type_ids: Tensor | None = None,
                 layer: int | None = None) -> Tensor:
    """Hidden states after layer ``layer`` (1..num_layers, None = last) on the packed path.

    input_ids: (total_tokens,) -> (total_tokens, hidden): ``BertModel.forward_packed`` stopped after ``layer``
    layers; ``final_norm`` (if the model has one) belongs to the last layer's output only.
    """
    n_layers = len(model.layers)
    layer = n_layers if layer is None else layer
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be in 1..{n_layers} for this model, got {layer}")
    return model.forward_packed(input_ids, packing, token_type_ids, num_layers=layer)


def token_states(encoder: Encoder, texts: Sequence[str], layer: int | None = None,
                 batch_size: int = 32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per text: L2-normalized float64 states ``(n_tokens_i, hidden)`` and token ids ``(n_tokens_i,)``,
    the template's special tokens ([CLS] and [SEP], or <s> and </s>) removed (so n_tokens_i may be 0)."""
    batch = encoder.tokenize(encoder.sentence.prepare(texts))  # no prompt: only the model's lowercasing
    template_ids = np.array(sorted(encoder.tokenizer.template_ids), dtype=np.int64)
    states: list[np.ndarray] = [np.zeros((0, encoder.hidden_size))] * len(texts)
    ids: list[np.ndarray] = [np.zeros(0, np.int64)] * len(texts)
    encoder.model.eval()
    with torch.inference_mode():
        for idx, input_ids, types, packing in encoder._batches(batch, batch_size):
            h = layer_states(encoder.model, input_ids, packing, types, layer).double().cpu().numpy()
            flat_ids = input_ids.cpu().numpy()
            cu = packing.cu_seqlens.tolist()
            for j, i in enumerate(idx):
                t, v = flat_ids[cu[j]:cu[j + 1]], h[cu[j]:cu[j + 1]]
                keep = ~np.isin(t, template_ids)  # [CLS]/[SEP], <s>/</s>, ...: what the template added
                v = v[keep]
                states[i] = v / np.linalg.norm(v, axis=1, keepdims=True)
                ids[i] = t[keep]
    return states, ids


# ---- scoring -----------------------------------------------------------------------------------
def idf_dict(references: Sequence[Sequence[int]]) -> defaultdict[int, float]:
    """idf(w) = -log((df(w) + 1) / (M + 1)) over the M token-id lists; unseen tokens get log(M + 1)."""
    m = len(references)
    df: dict[int, int] = defaultdict(int)
    for ids in references:
        for w in set(int(t) for t in ids):
            df[w] += 1
    idf: defaultdict[int, float] = defaultdict(lambda: math.log(m + 1))
    idf.update({w: -math.log((c + 1) / (m + 1)) for w, c in df.items()})
    return idf


def greedy_match(cand: np.ndarray, ref: np.ndarray, cand_weights: np.ndarray | None = None,
                 ref_weights: np.ndarray | None = None) -> tuple[float, float]:
    """(precision, recall) of unit token vectors cand (n, hidden) vs ref (m, hidden), n, m >= 1.

    Weights (n,) / (m,) weight the means; None, or all zero, means a plain mean.
    """
    sim = cand @ ref.T  # (n, m) cosines
    return _mean(sim.max(axis=1), cand_weights), _mean(sim.max(axis=0), ref_weights)


def _mean(x: np.ndarray, w: np.ndarray | None) -> float:
    if w is None or w.sum() == 0:
        return float(x.mean())
    return float((x * w).sum() / w.sum())


def f1_score(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """2PR / (P + R), 0 where P + R = 0."""
    denom = p + r
    return np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom != 0)


def rescale(result: BertScoreResult, baseline: tuple[float, float, float]) -> BertScoreResult:
    """(s - b) / (1 - b) for each of P, R, F with baseline (b_P, b_R, b_F)."""
    if len(baseline) != 3:
        raise ValueError(f"baseline must be three numbers (b_P, b_R, b_F), got {baseline!r}")
    b_p, b_r, b_f = (float(b) for b in baseline)
    if not all(b < 1 for b in (b_p, b_r, b_f)):
        raise ValueError(f"baseline values must be < 1, got {baseline!r}")
    return BertScoreResult((result.precision - b_p) / (1 - b_p), (result.recall - b_r) / (1 - b_r),
                           (result.f1 - b_f) / (1 - b_f))


def bertscore(candidates: Sequence[str], references: Sequence[str], model: str | Encoder = DEFAULT_MODEL,
              layer: int | None = None, idf: bool = False, baseline: tuple[float, float, float] | None = None,
              batch_size: int = 32) -> BertScoreResult:
    """BERTScore of candidates[i] against references[i]: per-pair P, R, F1, each (n_pairs,).

    model: a built-in name / local directory, or a loaded ``Encoder``. layer: 1..num_layers (None = last).
    idf: weight tokens by idf over the references. baseline: (b_P, b_R, b_F) to rescale with.
    """
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("bertscore() takes lists of texts; wrap a single text in a list")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references; they must pair up")
    if len(candidates) == 0:
        raise ValueError("no pairs to score")
    encoder = load(model) if isinstance(model, str) else model
    # Each distinct text is encoded once (repeated references, identical pairs, estimate_baseline).
    unique = list(dict.fromkeys([*candidates, *references]))
    where = {t: i for i, t in enumerate(unique)}
    states, ids = token_states(encoder, unique, layer, batch_size)
    ref_idf = idf_dict([ids[where[t]] for t in references]) if idf else None

    n = len(candidates)
    p, r = np.zeros(n), np.zeros(n)
    empty = []
    for k, (c, y) in enumerate(zip(candidates, references, strict=True)):
        ci, ri = where[c], where[y]
        if len(ids[ci]) == 0 or len(ids[ri]) == 0:
            empty.append(k)
            continue
        wc = wr = None
        if ref_idf is not None:
            wc = np.array([ref_idf[int(t)] for t in ids[ci]])
            wr = np.array([ref_idf[int(t)] for t in ids[ri]])
        p[k], r[k] = greedy_match(states[ci], states[ri], wc, wr)
    if empty:
        log.warning("%d pair(s) with an empty candidate or reference scored 0: indices %s%s", len(empty),
                    empty[:10], " ..." if len(empty) > 10 else "")
    result = BertScoreResult(p, r, f1_score(p, r))
    return result if baseline is None else rescale(result, baseline)


def estimate_baseline(texts: Sequence[str], model: str | Encoder = DEFAULT_MODEL, n_pairs: int = 1000,
                      seed: int = 0, layer: int | None = None, batch_size: int = 32) -> tuple[float, float, float]:
    """(b_P, b_R, b_F): mean BERTScore of ``n_pairs`` random pairs of different texts drawn from ``texts``.

    The paper's recipe (it used 1M Common Crawl sentence pairs), on texts you choose: take texts of the
    language and domain you will score. Use the same model and layer (and no idf) as for scoring.
    """
    distinct = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(distinct) < 2:
        raise ValueError(f"estimate_baseline needs at least 2 distinct non-empty texts, got {len(distinct)}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    rng = random.Random(seed)
    pairs = [rng.sample(range(len(distinct)), 2) for _ in range(n_pairs)]
    result = bertscore([distinct[i] for i, _ in pairs], [distinct[j] for _, j in pairs], model, layer,
                       batch_size=batch_size)
    return result.mean_precision, result.mean_recall, result.mean_f1
