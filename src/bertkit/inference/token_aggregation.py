"""Token tags of raw text -> entities with character offsets, as transformers' token-classification pipeline.

``TokenAggregator.entities`` follows ``TokenClassificationPipeline`` (``gather_pre_entities``, ``aggregate``,
``aggregate_words``, ``group_entities``) step for step, so that users moving from
``pipeline("token-classification", aggregation_strategy=...)`` get the same entities:

``none``      one entry per token not tagged ``O``: ``entity``, ``score``, ``index`` (token position, [CLS] = 0),
              ``word`` (the token string, e.g. ``##ing``), ``start``, ``end``
``simple``    adjacent tokens grouped by tag: ``entity_group``, ``score`` (mean of the tokens'), ``word``, ``start``,
              ``end``
``first``     each word takes its first token's tag, then words are grouped as in ``simple``
``average``   each word takes the tag of its tokens' mean probabilities
``max``       each word takes the tag of its single most confident token

Scores are softmax probabilities (float32, as the pipeline's). A token continues a word when the tokenizer marks
sub-words (WordPiece) and its string is longer or shorter than the text it covers; otherwise (byte-level BPE,
SentencePiece) when no space sits just before it, the pipeline's fallback heuristic. ``[UNK]`` tokens report the
text they cover and always start a word. Grouping follows the tag scheme: BIO, IOB1 and plain tags exactly as the
pipeline (``B-`` opens a group, a change of type ends one); BIOES/BILOU also at ``S-``/``U-`` and after ``E-``/``L-``
(``bertkit.data.tag_schemes.starts_group``), which the pipeline, knowing only ``B-``/``I-``, does not do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertkit.data.tag_schemes import entity_type, starts_group
from bertkit.data.tokenizer import Tokenizer

STRATEGIES = ("none", "simple", "first", "average", "max")
IGNORE_LABELS = ("O",)


def check_strategy(strategy: str) -> str:
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise ValueError(f"unknown aggregation_strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return strategy.lower()


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n_tokens, num_labels) float32 probabilities, computed as the pipeline computes them."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TokenAggregator:
    """Entities of one model's token predictions; what depends on the tokenizer is decided once, here."""

    def __init__(self, tokenizer: Tokenizer, labels: Sequence[str], scheme: str = "bio") -> None:
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.scheme = scheme
        self.word_aware = tokenizer.marks_subwords
        self.unk_id = tokenizer.token_id("unk")

    def entities(self, text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                 special_mask: Sequence[int], logits: np.ndarray, strategy: str = "simple") -> list[dict[str, Any]]:
        """The entities of one text: ``ids``/``offsets``/``special_mask`` from ``Tokenizer.encode_offsets``,
        ``logits`` (n_tokens, num_labels)."""
        strategy = check_strategy(strategy)
        tokens = self._tokens(text, ids, offsets, special_mask, softmax(logits))
        if strategy in ("none", "simple"):
            entities = []
            for t in tokens:
                best = int(t["scores"].argmax())
                entities.append({"entity": self.labels[best], "score": t["scores"][best], "index": t["index"],
                                 "word": t["word"], "start": t["start"], "end": t["end"]})
        else:
            entities = self._words(tokens, strategy)
        if strategy != "none":
            entities = self._group(entities)
        return [_plain(e) for e in entities
                if e.get("entity") not in IGNORE_LABELS and e.get("entity_group") not in IGNORE_LABELS]

    # ---- the pipeline's steps -----------------------------------------------------------------------------------
    def _tokens(self, text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                special_mask: Sequence[int], scores: np.ndarray) -> list[dict[str, Any]]:
        """gather_pre_entities: every non-special token with its string, probabilities, offsets, sub-word flag."""
        out = []
        strings = self.tokenizer.convert_ids_to_tokens(list(ids))
        for idx, (token_id, (start, end), special) in enumerate(zip(ids, offsets, special_mask, strict=True)):
            if special:
                continue
            word, covered = strings[idx], text[start:end]
            if self.word_aware:
                is_subword = len(word) != len(covered)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if token_id == self.unk_id:
                word, is_subword = covered, False
            out.append({"word": word, "scores": scores[idx], "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return out

    def _words(self, tokens: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        """aggregate_words: tokens -> words (a word = a token and the sub-words after it), one tag each."""
        groups: list[list[dict[str, Any]]] = []
        for t in tokens:
            if groups and t["is_subword"]:
                groups[-1].append(t)
            else:
                groups.append([t])
        return [self._word(g, strategy) for g in groups]

    def _word(self, tokens: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.labels[best], "score": scores[best],
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """group_entities: adjacent entries whose tags continue one another become one entity."""
        groups: list[list[dict[str, Any]]] = []
        for e in entities:
            if groups and not starts_group(groups[-1][-1]["entity"], e["entity"], self.scheme):
                groups[-1].append(e)
            else:
                groups.append([e])
        out = []
        for g in groups:
            score = np.nanmean([e["score"] for e in g])
            out.append({"entity_group": entity_type(g[0]["entity"], self.scheme), "score": np.mean(score),
                        "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in g]),
                        "start": g[0]["start"], "end": g[-1]["end"]})
        return out


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: numpy scalars -> Python numbers (float32 scores keep their value exactly)."""
    return {k: float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else v
            for k, v in entity.items()}
