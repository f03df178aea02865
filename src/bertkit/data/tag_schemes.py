"""Tag schemes of token tagging: which tags are legal where, entity spans from tags and tags from spans.

``bio``    IOB2 (CoNLL-2003 as distributed today): ``B-X`` starts every entity, ``I-X`` continues it, ``O`` outside
``iob1``   IOB1 (the original CoNLL-2003): ``I-X`` starts and continues; ``B-X`` only starts an entity that
           directly follows another ``X`` entity
``bioes``  ``B-X I-X* E-X`` for an entity of several tokens, ``S-X`` for one of one token (a.k.a. IOBES)
``bilou``  the same with ``L-`` (last) and ``U-`` (unit) for ``E-`` and ``S-``
``plain``  one tag per token and no entities (part-of-speech style): any tag is legal, scored per token

Spans are ``(type, start, end)`` with ``end`` exclusive, in token (word) indices. Decoding follows seqeval: ``bio``
and ``iob1`` the CoNLL chunking of its default mode (conlleval: ``B-X``, or an ``I-X`` after anything but ``X``,
starts a span, so a stray ``I-X`` is still an entity), ``bioes`` and ``bilou`` its ``mode="strict"`` (an entity
counts only when it is complete: ``B-X I-X* E-X`` or ``S-X``; broken ones are dropped). On tags that are valid in
their scheme the two agree; they differ only on a model's ill-formed predictions. The decoding itself lives in
``bertkit.metrics`` (``entity_spans``), which sits below ``data`` in the layer contract and scores with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bertkit.errors import BertkitError, ConfigError
from bertkit.metrics import SCHEME_PREFIXES, entity_spans, split_tag

if TYPE_CHECKING:
    from bertkit.data.task_files import TaskData

log = logging.getLogger("bertkit")

SCHEMES = ("bio", "iob1", "bioes", "bilou", "plain")
SPAN_SCHEMES = ("bio", "iob1", "bioes", "bilou")
AUTO = "auto"
Span = tuple[str, int, int]  # (type, start, end exclusive)


class TagSchemeError(BertkitError, ValueError):
    """Tags that break their scheme; the message names the sentence and the token."""


def check_scheme(scheme: str, allow_auto: bool = False) -> str:
    """``scheme`` itself, or a ConfigError listing the known ones."""
    known = (AUTO, *SCHEMES) if allow_auto else SCHEMES
    if scheme not in known:
        raise ConfigError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(known)}")
    return scheme


# ---- validation --------------------------------------------------------------------------------------------------
def tag_problem(tags: Sequence[str], i: int, scheme: str) -> str | None:
    """What is wrong with ``tags[i]`` in ``scheme`` given its neighbours, or None."""
    tag = tags[i]
    if not isinstance(tag, str) or not tag or any(c.isspace() for c in tag):
        return f"tag {tag!r} is not a tag (an empty string or one with spaces)"
    if scheme == "plain":
        return None
    begin, inside, last, single = SCHEME_PREFIXES[scheme]
    prefix, kind = split_tag(tag)
    allowed = [p for p in (begin, inside, last, single) if p]
    if prefix not in ("O", *allowed):
        return f"tag {tag!r} is not {scheme.upper()}: expected O or {', '.join(p + '-TYPE' for p in allowed)}"
    prev_prefix, prev_kind = split_tag(tags[i - 1]) if i else ("O", "")
    after = "starts the sentence" if i == 0 else f"follows {tags[i - 1]}"
    if scheme == "bio":
        if prefix == "I" and prev_kind != kind:
            return f"{tag} {after}; BIO needs B-{kind} first"
        return None
    if scheme == "iob1":
        if prefix == "B" and prev_kind != kind:
            return f"{tag} {after}; in IOB1 B- only separates two adjacent {kind} entities (use I-{kind})"
        return None
    # bioes / bilou: an open entity (B-X, I-X before) must go on with I-X or end with E-X/L-X
    open_before = prev_prefix in (begin, inside)
    continues = prefix in (inside, last)
    if continues and not (open_before and prev_kind == kind):
        return f"{tag} {after}; {scheme.upper()} needs {begin}-{kind} before it"
    if open_before and not (continues and prev_kind == kind):
        return f"{tags[i - 1]} is followed by {tag}; {scheme.upper()} ends an entity with {last}-{prev_kind}"
    if i == len(tags) - 1 and prefix in (begin, inside):
        return f"{tag} ends the sentence; {scheme.upper()} ends an entity with {last}-{kind}"
    return None


def validate(tags: Sequence[str], scheme: str, where: str = "sentence 1",
             words: Sequence[str] | None = None) -> None:
    """A TagSchemeError naming ``where`` (e.g. "train.conll, line 12" or "sentence 3") and the token when
    ``tags`` break ``scheme``."""
    check_scheme(scheme)
    for i in range(len(tags)):
        problem = tag_problem(tags, i, scheme)
        if problem:
            word = f" ({words[i]!r})" if words is not None and i < len(words) else ""
            raise TagSchemeError(f"{where}: token {i + 1}{word}: {problem}")


def is_valid(tags: Sequence[str], scheme: str) -> bool:
    return all(tag_problem(tags, i, scheme) is None for i in range(len(tags)))


def detect_scheme(sequences: Iterable[Sequence[str]]) -> str:
    """The scheme the tags are written in: ``plain`` when some tag has no ``X-`` prefix (other than ``O``),
    ``bilou`` with ``L-``/``U-``, ``bioes`` with ``E-``/``S-``, else ``bio`` or ``iob1``, whichever more sentences
    are valid in (``bio`` on a tie, e.g. all ``O``). The caller validates and logs the result."""
    seqs = [list(s) for s in sequences]
    prefixes = {split_tag(t)[0] for s in seqs for t in s}
    if "" in prefixes:
        return "plain"
    if prefixes & {"L", "U"}:
        return "bilou"
    if prefixes & {"E", "S"}:
        return "bioes"
    # B-/I- only: the scheme more sentences are valid in (bio on a tie), so that validation then names the
    # sentences that break the majority's scheme
    fits_bio = sum(is_valid(s, "bio") for s in seqs)
    return "bio" if fits_bio >= sum(is_valid(s, "iob1") for s in seqs) else "iob1"


def resolve_scheme(scheme: str, *datasets: TaskData | None) -> str:
    """The scheme of labelled NER data: ``scheme`` itself, or for ``"auto"`` the one detected on all the
    datasets together (logged); every sentence is then validated, the error naming file, sentence and token."""
    check_scheme(scheme, allow_auto=True)
    present = [d for d in datasets if d is not None and len(d) and d.labels]
    if scheme == AUTO:
        scheme = detect_scheme(tags for d in present for tags in d.labels)
        log.info("tag scheme: %s (detected on %s; set --scheme to choose)", scheme,
                 ", ".join(d.source for d in present) or "no data")
    for d in present:
        for i, tags in enumerate(d.labels):
            where = f"{d.source}, {d.where[i]}" if d.where else f"{d.source}: sentence {i + 1}"
            validate(tags, scheme, where, d.words[i] if d.words else None)
    return scheme


def scheme_of_labels(labels: Sequence[str]) -> str:
    """The scheme a model's label set is written in, for models saved without one (transformers' own, bertkit's
    before schemes): by the prefixes alone (``detect_scheme`` without the order of tags), ``bio`` for B-/I-."""
    prefixes = {split_tag(t)[0] for t in labels}
    if "" in prefixes:
        return "plain"
    return "bilou" if prefixes & {"L", "U"} else "bioes" if prefixes & {"E", "S"} else "bio"


# ---- spans <-> tags ----------------------------------------------------------------------------------------------
def to_spans(tags: Sequence[str], scheme: str = "bio") -> list[Span]:
    """The entity spans of one sentence's tags, in order (see the module docstring for the decoding rules)."""
    check_scheme(scheme)
    if scheme == "plain":
        raise ConfigError("plain tags have no entity spans: they are scored per token")
    return sorted(entity_spans(tags, scheme), key=lambda span: span[1])  # spans never overlap: one per start


def from_spans(spans: Iterable[Span], length: int, scheme: str = "bio") -> list[str]:
    """Tags of a sentence of ``length`` tokens holding ``spans`` (non-overlapping, each at least one token)."""
    check_scheme(scheme)
    if scheme == "plain":
        raise ConfigError("plain tags have no entity spans to write")
    begin, inside, last, single = SCHEME_PREFIXES[scheme]
    tags = ["O"] * length
    previous_end, previous_kind = -1, ""
    for kind, start, end in sorted(spans, key=lambda s: s[1]):
        if not (0 <= start < end <= length) or start < previous_end:
            raise ValueError(f"span {(kind, start, end)} is empty, overlaps another or lies outside "
                             f"{length} tokens")
        if not kind or any(c.isspace() for c in kind):
            raise ValueError(f"span type {kind!r} must be a non-empty string without spaces")
        n = end - start
        if scheme == "iob1":
            first = begin if start == previous_end and kind == previous_kind else inside
            tags[start:end] = [f"{first}-{kind}"] + [f"{inside}-{kind}"] * (n - 1)
        elif last is None:
            tags[start:end] = [f"{begin}-{kind}"] + [f"{inside}-{kind}"] * (n - 1)
        elif n == 1:
            tags[start] = f"{single}-{kind}"
        else:
            tags[start:end] = [f"{begin}-{kind}"] + [f"{inside}-{kind}"] * (n - 2) + [f"{last}-{kind}"]
        previous_end, previous_kind = end, kind
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Rewrite one sentence's tags from one span scheme into another (the same entities)."""
    return from_spans(to_spans(tags, source), len(tags), target)


# ---- grouping predicted tokens (raw-text prediction) ------------------------------------------------------------
def starts_group(previous: str | None, tag: str, scheme: str) -> bool:
    """Whether ``tag`` opens a new group after ``previous`` when adjacent predictions are grouped into entities.

    ``bio``, ``iob1`` and ``plain`` group exactly as transformers' ``TokenClassificationPipeline.group_entities``:
    only ``B-``/``I-`` are prefixes there (any other tag, ``O`` included, counts as ``I-`` of itself), and a group
    ends at a change of type or at ``B-``. That is IOB1's own rule too. ``bioes``/``bilou`` split ``X-`` prefixes by
    their letters and also open a group at ``S-``/``U-`` and after a group ended by ``E-``/``L-``/``S-``/``U-``."""
    if previous is None:
        return True
    if scheme not in ("bioes", "bilou"):
        (_, prev_kind), (prefix, kind) = _hf_tag(previous), _hf_tag(tag)
        return kind != prev_kind or prefix == "B"
    (prev_prefix, prev_kind), (prefix, kind) = split_tag(previous), split_tag(tag)
    _, _, last, single = SCHEME_PREFIXES[scheme]
    return kind != prev_kind or prefix in ("B", single) or prev_prefix in (last, single)


def _hf_tag(tag: str) -> tuple[str, str]:
    # transformers' get_tag
    return (tag[0], tag[2:]) if tag.startswith(("B-", "I-")) else ("I", tag)


def entity_type(tag: str, scheme: str = "bio") -> str:
    """The type a group opened by ``tag`` reports (``entity_group``): transformers takes what follows the first
    ``-`` (``"B-PER"`` -> ``"PER"``, ``"O"`` -> ``"O"``); ``bioes``/``bilou`` strip their prefix letters."""
    if scheme in ("bioes", "bilou"):
        prefix, kind = split_tag(tag)
        return "O" if prefix == "O" else kind
    return tag.split("-", 1)[-1]
