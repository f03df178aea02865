"""MkDocs hook: the benchmark results (plots and JSON in ``benchmarks/results/``) published with the site.

The files stay where the benchmarks write them (no copies under ``docs/``); each is added to the site as
``benchmarks/results/<name>``, so ``docs/benchmarks.md`` links them by the same relative path as the repository
(``benchmarks/results/compress_bbc_pareto.png``) and ``mkdocs build --strict`` checks every such link.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
KINDS = {".png", ".svg", ".json"}


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.iterdir()) if RESULTS.is_dir() else []:
        if path.is_file() and path.suffix in KINDS:
            files.append(File.generated(config, f"benchmarks/results/{path.name}", abs_src_path=str(path)))
    return files
