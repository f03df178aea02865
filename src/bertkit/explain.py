"""Token attributions for sequence task models: integrated gradients (IG) on the word embeddings.

For one input, x is its word-embedding vectors ``(tokens, width)`` (the output of the encoder's word-embedding
table, ``embeddings.word_embeddings`` in HF names; ``width`` is ``embedding_size`` for ELECTRA / DeBERTa) and x' a
baseline. Token i gets

    attr_i = sum_d (x - x')_{i,d} * integral_0^1 dF(x' + a (x - x')) / dx_{i,d} da

where F is the target's logit (a class's logit; multilabel: the label's logit before the sigmoid; regression: the
score). IG is complete: sum_i attr_i = F(x) - F(x'), up to the error of the quadrature, which every explanation
reports as ``delta = sum(attr) - (F(x) - F(x'))``. This is Captum's ``LayerIntegratedGradients`` on the word
embeddings with the same baseline and quadrature (tests/test_explain.py compares the two when captum is installed).

Baseline: the same sequence with every token of the text (and pair) replaced by the pad token; the tokens the
template adds ([CLS], [SEP], <s>, </s>) stay, and so do positions and token types (only the word embeddings are
interpolated). Quadrature: ``n_steps`` Gauss-Legendre nodes on [0, 1] (Captum's default, "gausslegendre"), or
the trapezoid rule on ``n_steps`` equally spaced points including both ends ("riemann_trapezoid").

How it runs: the model's own padding-free forward, unchanged. The interpolation points of one input are packed
back to back (equal lengths: one attention run), at most ``batch_size`` of them per forward + backward. They enter
through a forward hook on the word-embedding module that swaps its output for the interpolated vectors, only for
the ids tensor of this call (compared by identity): a forward of the same module in another thread (the server's
batcher) is untouched. Grad mode is on, so the layers take their plain (not in-place) path; dropout is off (eval).
Explanations need the float torch model: an int8, bf16 / fp16 or ONNX engine is refused by name.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.data.batch import pack
from bertkit.errors import ConfigError
from bertkit.model.heads import PROBLEM_TYPE
from bertkit.task_model import TaskModel

METHODS = ("gausslegendre", "riemann_trapezoid")
DEFAULT_STEPS = 50
SEQUENCE_TASKS = tuple(task for task in PROBLEM_TYPE if task != "ner")  # what a SequenceClassifier head does
# Tokens per forward + backward when batch_size is not given: the backward keeps every layer's activations (and
# attention scores) of the whole pass, several times what an inference batch of the same size holds.
MAX_PASS_TOKENS = 4096
_NON_SPACE = re.compile(r"\S")


@dataclass
class Explanation:
    """The attributions of one input to one target.

    tokens, spans, scores: one per token of the model's input, [CLS]/[SEP] included. spans: ``(start, end,
    sequence)`` character offsets into ``text`` (sequence 0) or ``text_pair`` (1); sequence None for the tokens
    the template adds. logit / baseline_logit: F(x) and F(x'); delta: ``sum(scores) - (logit - baseline_logit)``.
    """

    text: str
    text_pair: str | None
    tokens: list[str]
    spans: list[tuple[int, int, int | None]]
    scores: list[float]
    target: str  # the label's name; "score" for regression
    target_id: int
    logit: float
    baseline_logit: float
    delta: float
    n_steps: int
    method: str

    def word_scores(self) -> list[dict[str, Any]]:
        """The scores of sub-word tokens summed per word (a run of non-space characters of the text or pair):
        ``[{"word", "sequence", "start", "end", "score"}]`` in order. A token of spaces alone (byte-level BPE's
        "Ġ") counts for the word after it, as its space would prefix that word. The template's tokens are left
        out; so are words truncation cut off."""
        texts = (self.text, self.text_pair or "")
        words = [[(m.start(), m.end()) for m in re.finditer(r"\S+", t)] for t in texts]
        starts = [[a for a, _ in w] for w in words]
        merged: dict[tuple[int, int], float] = {}
        for (a, _, seq), score in zip(self.spans, self.scores, strict=True):
            if seq is None:
                continue
            if not words[seq]:
                continue
            after = _NON_SPACE.search(texts[seq], a)  # the token's first character that is not a space
            j = bisect.bisect_right(starts[seq], after.start()) - 1 if after else len(words[seq]) - 1
            merged[seq, j] = merged.get((seq, j), 0.0) + score
        return [{"word": texts[seq][words[seq][j][0]:words[seq][j][1]], "sequence": seq, "start": words[seq][j][0],
                 "end": words[seq][j][1], "score": score} for (seq, j), score in merged.items()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: target, tokens, offsets ([start, end, sequence]), scores, words (``word_scores``), logit,
        baseline_logit, delta, steps, method."""
        return {"target": self.target, "tokens": self.tokens, "offsets": [list(s) for s in self.spans],
                "scores": self.scores, "words": self.word_scores(), "logit": self.logit,
                "baseline_logit": self.baseline_logit, "delta": self.delta, "steps": self.n_steps,
                "method": self.method}


def why_not_explainable(model: TaskModel) -> str | None:
    """None if ``explain`` can run on ``model``, else why not (the task, or an engine without gradients)."""
    if model.task not in SEQUENCE_TASKS:
        return (f"explanations are for sequence task models ({', '.join(SEQUENCE_TASKS)}); this is a {model.task} "
                f"(token-classification) model")
    if model.onnx is not None:
        return "explanations need gradients: load the model with the torch backend, not onnx"
    if model.engine.precision != "fp32":
        return (f"explanations need the float (fp32) model, this one runs {model.engine.precision}: load it without "
                f"--int8 / --dtype")
    if any(not b.is_floating_point() for b in model.model.buffers()):  # a float model has no integer tensors
        return ("explanations need float weights; this model holds quantized (integer) ones, as a compressed "
                "checkpoint does: explain the float model it was compressed from")
    return None


def resolve_target(model: TaskModel, target: str | int | None) -> int | None:
    """A label name or id -> the output index to explain; None (the predicted label) stays None.

    Regression has one output, named "score" (or 0)."""
    if target is None:
        return None
    if model.task == "regression":
        if target in ("score", 0, "0"):
            return 0
        raise ConfigError(f"unknown target {target!r}: a regression model has one output, 'score'")
    if isinstance(target, str) and target in model.label2id:
        return model.label2id[target]
    as_int = target if isinstance(target, int) else int(target) if str(target).isdigit() else None
    if as_int is not None and 0 <= as_int < len(model.labels):
        return as_int
    raise ConfigError(f"unknown target {target!r}; this model's labels are: {', '.join(model.labels)} "
                      f"(or their ids 0-{len(model.labels) - 1})")


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), each (n_steps,): points on [0, 1] and weights summing to 1, so that
    integral_0^1 f(a) da ~= sum_k weights[k] * f(alphas[k])."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if n_steps < 1 or (method == "riemann_trapezoid" and n_steps < 2):
        raise ConfigError(f"n_steps must be >= {2 if method == 'riemann_trapezoid' else 1}, got {n_steps}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)  # on [-1, 1], weights sum to 2
        return (nodes + 1) / 2, weights / 2
    alphas = np.linspace(0.0, 1.0, n_steps)
    weights = np.full(n_steps, 1.0 / (n_steps - 1))
    weights[[0, -1]] /= 2
    return alphas, weights


@contextlib.contextmanager
def replaced_output(module: nn.Module, key: Tensor, value: Tensor) -> Iterator[None]:
    """While open, ``module(key)`` returns ``value`` instead of its output; calls with any other input (another
    thread's forward of the same module) run as usual."""
    def hook(_: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        if not args or args[0] is not key:
            return None
        if value.shape != output.shape:
            raise RuntimeError(f"replacement of shape {tuple(value.shape)} for an output of {tuple(output.shape)}")
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def explain(model: TaskModel, texts: Sequence[str], pairs: Sequence[str] | None = None,
            target: str | int | None = None, n_steps: int = DEFAULT_STEPS, method: str = "gausslegendre",
            batch_size: int | None = None) -> list[Explanation]:
    """Integrated-gradients attributions of each text (or text pair) to ``target`` (a label name or id; None: the
    label the model predicts for that input, for multilabel the most probable one; regression: the score), in
    input order.

    n_steps: quadrature points; batch_size: interpolation points per forward + backward (default: as many as fit
    in ``MAX_PASS_TOKENS`` tokens). Inputs are truncated to the model's max_length, as ``predict`` truncates them.
    """
    if isinstance(texts, str):
        raise TypeError("explain() takes a list of texts; wrap a single text in a list")
    if (reason := why_not_explainable(model)) is not None:
        raise ConfigError(reason)
    if model.task == "pair-classification" and pairs is None:
        raise ConfigError("this model classifies text pairs: pass pairs=[...]")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    target_id = resolve_target(model, target)
    alphas, weights = quadrature(n_steps, method)
    if not texts:
        return []
    batch, spans = model.tokenizer.encode_spans(list(texts), None if pairs is None else list(pairs), model.max_length)
    head = model.model
    was_training = head.training
    head.eval()  # no dropout
    try:
        out = []
        for i, text in enumerate(texts):
            ids = torch.tensor(batch.ids[i], dtype=torch.long, device=model.device)
            types = torch.tensor(batch.type_ids[i], dtype=torch.long, device=model.device)
            template = torch.tensor([s is None for _, _, s in spans[i]], device=model.device)
            base_ids = torch.where(template, ids, model.tokenizer.pad_id)
            at_x, at_base = _endpoint_logits(head, ids, base_ids, types)
            t = int(at_x.argmax()) if target_id is None else target_id
            scores = _integrated_gradients(head, ids, base_ids, types, t, alphas, weights, batch_size)
            logit, base_logit = float(at_x[t]), float(at_base[t])
            total = math.fsum(scores)
            out.append(Explanation(
                text=text, text_pair=None if pairs is None else pairs[i],
                tokens=model.tokenizer.convert_ids_to_tokens(batch.ids[i]), spans=spans[i], scores=scores,
                target="score" if model.task == "regression" else model.labels[t], target_id=t,
                logit=logit, baseline_logit=base_logit, delta=total - (logit - base_logit),
                n_steps=n_steps, method=method))
        return out
    finally:
        head.train(was_training)


def _endpoint_logits(head: nn.Module, ids: Tensor, base_ids: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
    """F at the input and at the baseline, every output: two (num_labels,) float tensors. The baseline's word
    embeddings are the pad token's own, so both are plain forwards of token ids."""
    flat, _, packing = pack([ids.tolist(), base_ids.tolist()], device=ids.device)
    with torch.no_grad():
        logits = head(flat, packing, types.repeat(2)).float()  # (2, num_labels)
    return logits[0], logits[1]


def _integrated_gradients(head: nn.Module, ids: Tensor, base_ids: Tensor, types: Tensor, target: int,
                          alphas: np.ndarray, weights: np.ndarray, batch_size: int | None) -> list[float]:
    """Per-token IG scores of one sequence (see the module docstring): (n_tokens,) as a list."""
    word = head.encoder.embeddings.word
    n = ids.shape[0]
    with torch.no_grad():
        x, x0 = word(ids).float(), word(base_ids).float()  # (n, width) each
    diff = x - x0
    per_pass = batch_size or max(1, MAX_PASS_TOKENS // n)
    grad_sum = torch.zeros_like(x, dtype=torch.float64)  # sum_k w_k dF/dx at point k, (n, width)
    a_all = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    w_all = torch.tensor(weights, dtype=torch.float64, device=x.device)
    for start in range(0, len(alphas), per_pass):
        a, w = a_all[start:start + per_pass], w_all[start:start + per_pass]
        k = a.shape[0]
        flat, _, packing = pack([ids.tolist()] * k, device=ids.device)  # (k * n,), one run of k sequences
        points = (x0 + a[:, None, None] * diff).reshape(k * n, -1).requires_grad_()  # (k * n, width)
        with torch.enable_grad(), replaced_output(word, flat, points):
            f = head(flat, packing, types.repeat(k))[:, target]  # (k,)
            (grad,) = torch.autograd.grad(f.sum(), points)  # row block j is dF_j/dx at point j (sequences are apart)
        grad_sum += (w[:, None, None] * grad.view(k, n, -1).double()).sum(0)
    return (diff.double() * grad_sum).sum(-1).tolist()
