"""Masked-token prediction, and zero-/few-shot classification through the MLM head.

``FillMask``          top-k fillers of every ``[MASK]``, as transformers' fill-mask pipeline. Texts are
                      packed padding-free, and the MLM head runs only on the mask rows.
``PromptClassifier``  cloze-style classification (PET: Schick & Schütze 2021, "Exploiting Cloze
                      Questions" / "It's Not Just Size That Matters"): each text is put into a template
                      with one ``[MASK]``, e.g. "{text} This article is about [MASK].", and each label
                      is scored by the MLM's log-probabilities of its verbalizer words at the mask.
                      ``fit`` fine-tunes the masked LM on a few labelled examples with that same score.

Both need a *trained* MLM head: a sentence model such as all-MiniLM-L6-v2 ships without one, so its
head is freshly initialised and its predictions are noise (``from_pretrained`` warns).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit import metrics as M
from bertkit.data.tokenizer import Tokenizer
from bertkit.encoder import default_max_length, engine_options, pick_device
from bertkit.errors import BertkitError, CheckpointError
from bertkit.hub import DEFAULT_MODEL
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.model.attention import Packing
from bertkit.model.directory import load_encoder
from bertkit.model.mlm import MaskedLM, has_mlm_head
from bertkit.train.optim import build_optimizer
from bertkit.utils.runtime import tune_allocator

log = logging.getLogger("bertkit")

MASK = "[MASK]"
TEXT_SLOT = "{text}"


class FillMask:
    def __init__(self, model: MaskedLM, tokenizer: Tokenizer, max_length: int = 512,
                 head_trained: bool = True, name: str = "", engine: Engine | None = None) -> None:
        """head_trained: whether the MLM head came from the checkpoint (False: freshly initialised)."""
        if tokenizer.vocab_size > model.config.vocab_size:
            raise CheckpointError(f"{name or 'model'}: tokenizer has {tokenizer.vocab_size} tokens but config "
                                  f"vocab_size is {model.config.vocab_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.head_trained = head_trained
        self.name = name
        self.engine = engine or Engine()

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike[str] | None = None,
                        device: str | torch.device | None = None, engine: EngineOptions | None = None,
                        dtype: str | None = None, int8: bool | None = None) -> FillMask:
        """A built-in name or an HF BERT directory, with (BertForMaskedLM) or without an MLM head.

        engine: how inference runs (see ``Encoder.from_pretrained``); the torch backend only."""
        options = engine_options(engine, dtype=dtype, int8=int8)
        if options.backend != "torch":
            raise BertkitError("fill-mask runs on the torch backend only (the ONNX graph has no MLM head)")
        if pick_device(device).type == "cpu":
            tune_allocator()
        encoder, heads, info = load_encoder(name_or_dir, who="fill-mask")
        model = MaskedLM.from_encoder(encoder, heads, str(info.path))
        head_trained = has_mlm_head(heads, model.spec)
        name = str(name_or_dir or DEFAULT_MODEL)
        if not head_trained:
            arch = info.family.architecture(info.model_type, "mlm")
            log.warning("%s has no trained MLM head: a random one was created, so masked-token predictions and "
                        "zero-shot prompts are meaningless; use a checkpoint saved as %s", name, arch)
        max_length = default_max_length(info.path, model.config.max_tokens, info.weights_dir)
        tokenizer = Tokenizer.from_dir(info.weights_dir)
        tokenizer.require_mask_id("fill-mask")
        eng = Engine(options)
        model.to(pick_device(device))
        eng.prepare(model.encoder, tokenizer, pick_device(device), name)
        return cls(model, tokenizer, max_length, head_trained, name, eng)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- batches and mask logits ----------------------------------------------------------
    def pack(self, ids: Sequence[list[int]]) -> tuple[Tensor, Packing]:
        """Token id lists -> (total_tokens,) ids and their packing, on the model's device."""
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long, device=self.device)
        return flat, Packing.from_lengths([len(seq) for seq in ids], device=self.device)

    def batches(self, ids: Sequence[list[int]], batch_size: int | None = None
                ) -> Iterator[tuple[np.ndarray, Tensor, Packing]]:
        """Yield (input indices, ids (T,), packing): the engine's token-budget batches, longest first."""
        for idx, flat, _, packing in self.engine.batches(ids, None, self.device, batch_size):
            yield idx, flat, packing

    def mask_logits(self, ids: Tensor, packing: Packing) -> Tensor:
        """ids (total_tokens,) -> logits (n_masks, vocab) of every [MASK], in token order."""
        positions = (ids == self.tokenizer.mask_id).nonzero().squeeze(1)
        return self.model(ids, packing, positions)

    @property
    def mask_token(self) -> str:
        """The model's own mask token ("[MASK]", "<mask>" ...); texts may write either it or "[MASK]"."""
        return self.tokenizer.special_tokens.get("mask") or MASK

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text with its special tokens; every text must keep at least one mask within max_length.

        "[MASK]" in a text stands for the model's own mask token (RoBERTa's "<mask>" ...), as users of BERT
        write it."""
        own = self.mask_token
        if own != MASK:
            texts = [t.replace(MASK, own) for t in texts]
        batch = self.tokenizer.encode(list(texts), max_length=self.max_length)
        for i, (text, seq) in enumerate(zip(texts, batch.ids, strict=True)):
            n = seq.count(self.tokenizer.mask_id)
            if n == 0:
                raise BertkitError(f"text {i} has no {MASK} token: {text[:80]!r}")
            if n < text.count(own):
                raise BertkitError(f"text {i}: {text.count(own) - n} of its {MASK} tokens lie beyond "
                                   f"max_length={self.max_length} tokens")
        if batch.n_truncated:
            log.warning("%d of %d texts were longer than max_length=%d tokens and were truncated",
                        batch.n_truncated, len(texts), self.max_length)
        return batch.ids

    # ---- public API -----------------------------------------------------------------------
    @overload
    def __call__(self, texts: str, top_k: int = ..., batch_size: int | None = ...) -> list[list[dict[str, Any]]]: ...
    @overload
    def __call__(self, texts: list[str], top_k: int = ...,
                 batch_size: int | None = ...) -> list[list[list[dict[str, Any]]]]: ...

    def __call__(self, texts, top_k=5, batch_size=None):
        """Top-k fillers of each [MASK]: for one text, a list per mask (left to right) of ``top_k`` dicts
        {"token", "token_id", "score" (softmax probability), "sequence" (the text with it filled in)},
        best first; for a list of texts, one such list per text.
        """
        if isinstance(texts, str):
            return self([texts], top_k, batch_size)[0]
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        ids = self.tokenize(texts)
        out: list[list[list[dict[str, Any]]]] = [[] for _ in texts]
        self.model.eval()
        with self.engine.running(self.device):
            for idx, flat, packing in self.batches(ids, batch_size):
                probs = self.mask_logits(flat, packing).float().softmax(-1)  # (n_masks, vocab)
                scores, tokens = probs.topk(min(top_k, probs.shape[1]), dim=-1)
                scores, tokens = scores.cpu().tolist(), tokens.cpu().tolist()
                row = 0  # masks come in packing order: batch texts in turn, each left to right
                for i in idx:
                    for pos in (p for p, t in enumerate(ids[i]) if t == self.tokenizer.mask_id):
                        out[i].append([self._prediction(ids[i], pos, t, s)
                                       for t, s in zip(tokens[row], scores[row], strict=True)])
                        row += 1
        return out

    def _prediction(self, ids: list[int], pos: int, token_id: int, score: float) -> dict[str, Any]:
        filled = ids[1:-1]  # without [CLS]/[SEP]; other [MASK]s stay visible, so specials are not skipped
        filled[pos - 1] = token_id
        return {"token": self.tokenizer.convert_ids_to_tokens([token_id])[0], "token_id": token_id,
                "score": score, "sequence": self.tokenizer.decode(filled, skip_special_tokens=False)}


class PromptClassifier:
    def __init__(self, fill_mask: FillMask, template: str, verbalizers: dict[str, list[str]]) -> None:
        """template: contains ``{text}`` once and ``[MASK]`` once, e.g. "{text} This article is about [MASK].".
        verbalizers: label -> words (a single word may be given as a str); each word must be one token
        of the vocabulary (after the tokenizer's normalization, e.g. lower-casing), else BertkitError.
        A label's score is the *mean* of its words' log-probabilities at the mask (log of the geometric
        mean probability), so a label with more words is not favoured; labels are softmaxed over it.
        """
        if not isinstance(template, str) or template.count(TEXT_SLOT) != 1:
            raise BertkitError(f"template must contain {TEXT_SLOT} exactly once, got {template!r}")
        if template.count(MASK) != 1:
            raise BertkitError(f"template must contain {MASK} exactly once, got {template!r}")
        if not isinstance(verbalizers, dict) or len(verbalizers) < 2:
            raise BertkitError("verbalizers must map at least two labels to their words")
        tok = fill_mask.tokenizer
        self.fill_mask = fill_mask
        self.template = template
        self.labels = [str(label) for label in verbalizers]
        head, tail = template.replace(MASK, fill_mask.mask_token).split(TEXT_SLOT)
        # Template pieces are tokenized apart from the text, so truncating the text never cuts them.
        self._head, self._tail = tok.encode_plain([head, tail])
        if (self._head + self._tail).count(tok.mask_id) != 1:
            raise BertkitError(f"template {template!r}: the tokenizer does not read {MASK} as its mask token")
        n_special = tok.num_special_tokens(pair=False)
        budget = fill_mask.max_length - n_special - len(self._head) - len(self._tail)
        if budget < 1:
            taken = len(self._head) + len(self._tail) + n_special
            raise BertkitError(f"template {template!r} takes {taken} tokens, "
                               f"leaving no room for the text within max_length={fill_mask.max_length}")
        self._budget = budget
        self.token_ids: dict[str, list[int]] = {}  # label -> verbalizer token ids
        owner: dict[int, tuple[str, str]] = {}
        for label, words in verbalizers.items():
            words = [words] if isinstance(words, str) else list(words)
            if not words:
                raise BertkitError(f"label {label!r} has no verbalizer words")
            ids = []
            for word in words:
                pieces = tok.encode_plain([word])[0] if isinstance(word, str) else []
                if len(pieces) != 1 or pieces[0] == tok.unk_id:
                    found = tok.convert_ids_to_tokens(pieces)
                    raise BertkitError(f"label {label!r}: verbalizer {word!r} is not a single token of the "
                                       f"vocabulary (it tokenizes to {found}); pick a word the vocabulary has whole")
                if pieces[0] in owner:
                    other = owner[pieces[0]]
                    raise BertkitError(f"label {label!r}: verbalizer {word!r} is the same token as {other[1]!r} "
                                       f"of label {other[0]!r}")
                owner[pieces[0]] = (str(label), word)
                ids.append(pieces[0])
            self.token_ids[str(label)] = ids
        # scores = log_probs[:, columns] @ weights.T: weights (n_labels, n_columns) holds 1/k for a label's k words
        self._columns = torch.tensor(list(owner), dtype=torch.long)
        self._weights = torch.zeros(len(self.labels), len(owner))
        for j, tid in enumerate(owner):
            label = owner[tid][0]
            self._weights[self.labels.index(label), j] = 1.0 / len(self.token_ids[label])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] template-with-text [SEP] ids; the text (never the template) is cut to fit max_length."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts; wrap a single text in a list")
        tok = self.fill_mask.tokenizer
        bodies = tok.encode_plain(list(texts))
        out, n_cut = [], 0
        for i, body in enumerate(bodies):
            if tok.mask_id in body:
                raise BertkitError(f"text {i} contains {MASK}; only the template may: {texts[i][:80]!r}")
            n_cut += len(body) > self._budget
            out.append(tok.build_inputs([*self._head, *body[:self._budget], *self._tail])[0])
        if n_cut:
            log.warning("%d of %d texts were cut to %d tokens to fit the template into max_length=%d",
                        n_cut, len(out), self._budget, self.fill_mask.max_length)
        return out

    def label_scores(self, ids: Tensor, packing: Packing) -> Tensor:
        """ids (total_tokens,) of templated texts -> (batch, n_labels) mean verbalizer log-probs at the mask."""
        log_probs = self.fill_mask.mask_logits(ids, packing).float().log_softmax(-1)  # (batch, vocab)
        cols, weights = self._columns.to(log_probs.device), self._weights.to(log_probs.device)
        return log_probs[:, cols] @ weights.T

    def _label_ids(self, labels: Sequence[str], n: int) -> list[int]:
        if len(labels) != n:
            raise BertkitError(f"{n} texts but {len(labels)} labels")
        index = {name: i for i, name in enumerate(self.labels)}
        for i, label in enumerate(labels):
            if label not in index:
                raise BertkitError(f"labels[{i}] is {label!r}, not one of the verbalized labels "
                                   f"({', '.join(self.labels)})")
        return [index[label] for label in labels]

    # ---- public API -----------------------------------------------------------------------
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 (len(texts), n_labels), columns in ``self.labels`` order, rows sum to 1."""
        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        self.fill_mask.model.eval()
        with torch.inference_mode():
            for idx, flat, packing in self.fill_mask.batches(ids, batch_size):
                out[idx] = self.label_scores(flat, packing).softmax(-1).cpu().numpy()
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(1)]

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], batch_size: int = 32) -> dict[str, float]:
        self._label_ids(labels, len(texts))
        pred = self.predict(texts, batch_size)
        return {"accuracy": M.accuracy(list(labels), pred), "macro_f1": M.f1(list(labels), pred, average="macro")}

    def fit(self, texts: Sequence[str], labels: Sequence[str], epochs: int = 10, lr: float = 2e-5,
            batch_size: int = 8, seed: int = 0) -> list[float]:
        """Few-shot PET fine-tune of the whole masked LM (in place): AdamW on cross-entropy over the
        label scores at the mask. Returns the mean training loss of each epoch.
        """
        y = torch.tensor(self._label_ids(labels, len(texts)), dtype=torch.long)
        if len(y) == 0:
            raise BertkitError("fit() needs at least one labelled text")
        ids = self.encode(texts)
        model = self.fill_mask.model
        opt = build_optimizer(model, lr)
        order_rng = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        model.train()
        try:
            for _ in range(epochs):
                order, total = torch.randperm(len(ids), generator=order_rng).tolist(), 0.0
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    flat, packing = self.fill_mask.pack([ids[i] for i in idx])
                    loss = F.cross_entropy(self.label_scores(flat, packing), y[idx].to(flat.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                losses.append(total / len(ids))
        finally:
            model.eval()
        return losses
