"""Retrieval data: queries, documents and relevance judgements (qrels), from files or built from BBC News.

Files, as BEIR lays them out:
  queries / documents  ``.jsonl`` objects with ``_id`` (or ``id``) and ``text`` (documents may add ``title``,
                       which is prepended to the text), or ``.tsv`` rows ``id<TAB>text``
  qrels                ``.tsv`` rows ``query-id<TAB>corpus-id<TAB>score`` (a header row is skipped)
A missing or duplicate id, a qrels row naming an unknown query or document, or a bad score is an error
naming the file and line.

Built-in ``bbc-news``: each distinct title is a query, each distinct body a document, and a title's
article bodies are its relevant documents (one, except where the package has two articles under one
title). Queries are split 80/10/10 with a seed; the documents are all 2,092 distinct bodies for every
split, so a test query searches the whole collection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.packaged import load_bbc_news
from bertkit.data.text_files import json_object, read_lines
from bertkit.errors import BertkitError, InputFileError

SPLITS = ("train", "dev", "test")
DOC_FORMATS = (".jsonl", ".tsv", ".txt")


@dataclass
class RetrievalData:
    queries: dict[str, str]  # id -> text
    docs: dict[str, str]  # id -> text
    qrels: dict[str, dict[str, float]]  # query id -> {doc id: relevance}
    source: str = ""

    def __post_init__(self) -> None:
        for q, rel in self.qrels.items():
            if q not in self.queries:
                raise BertkitError(f"{self.source}: qrels name query {q!r}, which is not among the queries")
            unknown = [d for d in rel if d not in self.docs]
            if unknown:
                raise BertkitError(f"{self.source}: qrels of query {q!r} name unknown document {unknown[0]!r}")

    def describe(self) -> str:
        judged = sum(len(r) for r in self.qrels.values())
        return f"{self.source}: {len(self.queries):,} queries, {len(self.docs):,} documents, {judged:,} judgements"


def read_documents(path: str | os.PathLike[str], id_field: str | None = None, text_field: str = "text",
                   what: str = "documents",
                   formats: tuple[str, ...] = DOC_FORMATS) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """ids, texts and metadata of a queries or documents file; errors name file and line.

    ``.jsonl``: a BEIR-style ``title`` is prepended to the text ("title. text") and kept in the metadata
    beside the raw text and every other field. ``.tsv``: id<TAB>text. ``.txt``: one text a line, id = line
    number.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    one = {"queries": "query"}.get(what, what.removesuffix("s"))
    if suffix not in formats:
        raise InputFileError(path, f"unsupported {what} format {suffix!r}; expected {' or '.join(formats)}")
    ids: list[str] = []
    texts: list[str] = []
    metadata: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        meta: dict[str, Any] = {}
        if suffix == ".txt":
            ident, text = str(n), line
        elif suffix == ".tsv":
            ident, sep, text = line.partition("\t")
            if not sep:
                raise InputFileError(path, "expected 'id<TAB>text'", line=n)
        else:
            obj = json_object(path, line, n)
            key = id_field or ("_id" if "_id" in obj else "id")
            if key not in obj:
                named = repr(key) if id_field else "'_id' (or 'id')"
                raise InputFileError(path, f"missing field {named} (fields: {', '.join(obj) or 'none'})", line=n)
            if isinstance(obj[key], bool) or not isinstance(obj[key], str | int):
                raise InputFileError(path, f"id field {key!r} is {type(obj[key]).__name__}, expected a string",
                                     line=n)
            if not isinstance(obj.get(text_field), str):
                raise InputFileError(path, f"missing or non-string field {text_field!r}", line=n)
            ident, text = str(obj[key]), obj[text_field]
            meta = {k: v for k, v in obj.items() if k not in (key, text_field)}
            meta["text"] = text
            if isinstance(obj.get("title"), str) and obj["title"].strip():
                text = f"{obj['title'].strip()}. {text}"
        ident = ident.strip()
        if not ident:
            raise InputFileError(path, f"empty {one} id", line=n)
        if ident in first_line:
            raise InputFileError(path, f"duplicate {one} id {ident!r} (first on line {first_line[ident]})", line=n)
        first_line[ident] = n
        ids.append(ident)
        texts.append(text)
        metadata.append(meta or {"text": text})
    if not ids:
        raise InputFileError(path, f"no {what} found")
    return ids, texts, metadata


def read_texts_by_id(path: str | os.PathLike[str], what: str) -> dict[str, str]:
    """A BEIR queries or documents file (.jsonl or .tsv) -> {id: text}, ids unique and non-empty."""
    ids, texts, _ = read_documents(path, what=what, formats=(".jsonl", ".tsv"))
    return dict(zip(ids, texts, strict=True))


def read_qrels(path: str | os.PathLike[str], queries: dict[str, str],
               docs: dict[str, str]) -> dict[str, dict[str, float]]:
    path = Path(path)
    qrels: dict[str, dict[str, float]] = {}
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) == 4:  # TREC layout: query-id, iteration, doc-id, relevance
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise InputFileError(path, f"expected 'query-id<TAB>corpus-id<TAB>score', got {len(fields)} fields", line=n)
        q, d, score = (f.strip() for f in fields)
        try:
            value = float(score)
        except ValueError:
            if n == 1:
                continue  # a header row
            raise InputFileError(path, f"score {score!r} is not a number", line=n) from None
        if q not in queries:
            raise InputFileError(path, f"unknown query id {q!r}", line=n)
        if d not in docs:
            raise InputFileError(path, f"unknown document id {d!r}", line=n)
        qrels.setdefault(q, {})[d] = value
    if not qrels:
        raise InputFileError(path, "no judgements found")
    return qrels


def load_retrieval_files(queries: str | os.PathLike[str], docs: str | os.PathLike[str],
                         qrels: str | os.PathLike[str]) -> RetrievalData:
    q = read_texts_by_id(queries, "queries")
    d = read_texts_by_id(docs, "documents")
    judged = read_qrels(qrels, q, d)
    # only judged queries are evaluated; the others are kept out so that nobody embeds them for nothing
    return RetrievalData({k: q[k] for k in judged}, d, judged, source=str(qrels))


def bbc_retrieval(split: str = "test", seed: int = 42) -> RetrievalData:
    """BBC News title -> body retrieval; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    articles = load_bbc_news(dedupe=True)
    docs: dict[str, str] = {}
    doc_of_body: dict[str, str] = {}
    titles: dict[str, str] = {}  # title -> query id
    qrels: dict[str, dict[str, float]] = {}
    for a in articles:
        stem = a.path.removesuffix(".txt")
        if a.body not in doc_of_body:
            doc_of_body[a.body] = f"d:{stem}"
            docs[f"d:{stem}"] = a.body
        q = titles.setdefault(a.title, f"q:{stem}")
        qrels.setdefault(q, {})[doc_of_body[a.body]] = 1.0
    ids = sorted(qrels)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_dev = n_test = round(0.1 * len(ids))
    part = {"test": order[:n_test], "dev": order[n_test:n_test + n_dev], "train": order[n_test + n_dev:]}[split]
    chosen = sorted(ids[i] for i in part)
    queries = {q: t for t, q in titles.items()}
    return RetrievalData({q: queries[q] for q in chosen}, docs, {q: qrels[q] for q in chosen},
                         source=f"bbc-news:{split}")


def training_splits(dataset: str | None, queries: str | None, docs: str | None, qrels: str | None,
                    seed: int = 42) -> tuple[RetrievalData, RetrievalData | None, RetrievalData | None]:
    """(train, dev, test) for a trainer: the built-in benchmark's three splits, or one set of files (no dev or test)."""
    if dataset:
        if dataset != "bbc-news":
            raise ValueError(f"unknown retrieval dataset {dataset!r}; the built-in one is bbc-news")
        if queries or docs or qrels:
            raise ValueError("give either --dataset or --queries/--docs/--qrels, not both")
        return bbc_retrieval("train", seed), bbc_retrieval("dev", seed), bbc_retrieval("test", seed)
    if queries and docs and qrels:
        return load_retrieval_files(queries, docs, qrels), None, None
    raise ValueError("give --dataset bbc-news, or all three of --queries, --docs and --qrels")


def bbc_documents() -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The distinct BBC News articles: id topic/number, "title. body" embedded, title, topic and body as metadata."""
    articles = load_bbc_news(dedupe=True)
    return ([a.path.removesuffix(".txt") for a in articles], [f"{a.title}. {a.body}" for a in articles],
            [{"title": a.title, "topic": a.topic, "text": a.body} for a in articles])
