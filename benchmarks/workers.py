"""Benchmark plumbing: one worker in a fresh process (its own threads, allocator state and peak RSS), and the
results file written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def spawn(script: str, args: list[str], **env: str) -> dict:
    """``python script *args``; the worker prints one JSON object as its last stdout line, returned here."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_info() -> dict:
    """The CPU the numbers were measured on: model, class and torch's capability (``bertkit.inference.cpu``)."""
    from bertkit.inference.cpu import detect

    info = detect()
    return {"cpu_model": info.model, "cpu_class": info.cpu_class, "torch_cpu_capability": info.torch_capability,
            "cores": os.cpu_count()}


def write_report(path: str | os.PathLike[str], report: dict) -> None:
    """``report`` as indented JSON at ``path``, through a temp file: a killed run never leaves half a file.
    Every report gets a ``cpu`` entry (``cpu_info``) unless it already carries one."""
    report = {**report, "cpu": report.get("cpu") or cpu_info()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
