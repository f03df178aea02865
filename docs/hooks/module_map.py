"""MkDocs hook: the module map of ``architecture.md``, generated from the modules' own docstrings at build time.

The page holds the marker below; this hook replaces it with one line per module of ``src/bertkit`` (packages
and their modules, depth first): the module's path and the first sentence of its docstring, read with ``ast``
(nothing is imported). The map therefore says what the code says; a module without a docstring fails the build.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

MARKER = "<!-- bertkit-module-map -->"
PAGE = "architecture.md"
SRC = Path(__file__).resolve().parents[2] / "src" / "bertkit"
WIDTH = 120


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        raise PluginError(f"{path}: no module docstring (the module map in {PAGE} is made of them)")
    text = " ".join(doc.split("\n\n")[0].replace("``", "").split())  # the first paragraph, on one line
    match = re.match(r"(.+?)(?<!\bal)(?<!e\.g)(?<!i\.e)\.(\s|$)", text)  # up to its first full stop
    return (match.group(1) if match else text).rstrip(":")


def rows() -> list[tuple[str, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.name == "__init__.py":
            if rel.parent == Path("."):
                continue  # the package itself: the page says what it is
            name = f"{rel.parent.as_posix()}/"
            if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))):
                continue  # a bare package marker (model/, data/, ...): its modules say it
        else:
            name = rel.with_suffix("").as_posix()
        out.append((name, first_sentence(path)))
    return sorted(out, key=lambda r: r[0].rstrip("/"))


def render() -> str:
    table = rows()
    width = max(len(name) for name, _ in table) + 2
    lines = []
    for name, text in table:
        words, line = text.split(), name.ljust(width)
        for word in words:
            if len(line) + 1 + len(word) > WIDTH and line.strip() != name:
                lines.append(line.rstrip())
                line = " " * width
            line += word + " "
        lines.append(line.rstrip())
    return "```text\n" + "\n".join(lines) + "\n```"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001  (mkdocs' hook signature)
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE}: the marker {MARKER} is missing")
    return markdown.replace(MARKER, render())
