"""Run one benchmark worker in a fresh process: its own threads, allocator state and peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def spawn(script: str, args: list[str], **env: str) -> dict:
    """``python script *args``; the worker prints one JSON object as its last stdout line, returned here."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
