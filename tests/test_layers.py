"""The package's shape as a checked contract: layers (import-linter, ``.importlinter``), no module-level import cycle
(imports inside functions count: a call-time import that closes a circle is still a circle), no private name
imported from another module, and the library never importing the command line."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The one listed exception (also in .importlinter), removed with it in 0.3: the deprecated EncoderConfig.from_json_file
# / .save hand the file to model.families.read_config / write_config (which build on EncoderConfig) at call time.
ALLOWED_EDGES = {("bertkit.model.config", "bertkit.model.families")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "bertkit").rglob("*.py"))}


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """(imported bertkit module, imported name or None, line) of every import in module ``name``, at any depth."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m in MODULES and m != name]


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if (m, t) not in ALLOWED_EDGES} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (imports inside functions included):\n" + "\n".join(map(str, found))


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_a_module():
    crossings = [f"{m} (line {line}) imports {name} from {t}" for m in MODULES for t, name, line in imports(m)
                 if name and name.startswith("_") and not name.startswith("__")]
    assert not crossings, "\n".join(crossings)


def test_library_never_imports_the_cli():
    upward = [f"{m} (line {line}) imports {t}" for m in MODULES if not m.startswith("bertkit.cli")
              for t, _, line in imports(m) if t == "bertkit.cli" or t.startswith("bertkit.cli.")]
    assert not upward, "\n".join(upward)


def test_layer_contract():
    """``lint-imports`` with the contracts in .importlinter (layers, acyclic sibling packages)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (make test installs it)")
    run = subprocess.run([exe, "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
