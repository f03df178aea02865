"""Process-level CPU settings that change speed, applied explicitly and logged.

glibc serves allocations above its mmap threshold (up to 32 MB) with fresh ``mmap`` pages and
returns them on free, so every large activation tensor page-faults anew. On this 2-core CPU that
cost 30% of embedding throughput at 256-token batches (4,700 -> 6,750 tokens/s, docs/benchmarks.md
"Allocator setting"). Raising the threshold keeps freed blocks in the heap for reuse, as jemalloc/tcmalloc
would; the price is a higher resident set after peaks. Set ``BERTKIT_MALLOC_TUNING=0`` to leave the allocator alone.
``trim_heap()`` returns free heap pages to the OS; the server calls it every few seconds under load.

``cache_dir()`` is where per-machine and per-model decisions are kept (the CPU kernel choice, int8
calibration): ``$BERTKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bertkit``, else ``~/.cache/bertkit``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger("bertkit")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_state: dict[str, bool] = {}
_trim_state = {"last": float("-inf")}
_trim_lock = threading.Lock()


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds once per process. Returns whether it was applied."""
    if "malloc" in _state:
        return _state["malloc"]
    applied = False
    if os.environ.get("BERTKIT_MALLOC_TUNING", "1") == "0":
        log.info("allocator: left as is (BERTKIT_MALLOC_TUNING=0)")
    elif sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
        except (OSError, AttributeError):
            applied = False
        log.info("allocator: glibc mmap/trim threshold %s", f"raised to {threshold_bytes >> 20} MiB" if applied
                 else "not changed (mallopt unavailable)")
    _state["malloc"] = applied
    return applied


def map_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """For long streaming jobs: serve allocations above ``threshold_bytes`` with their own ``mmap`` pages, handed
    back to the OS on free, instead of the heap. Returns whether it was applied (glibc only).

    Why: ``tune_allocator`` keeps freed activation tensors in the heap, fastest for a process that embeds one
    batch of texts, but batches of varying token counts fragment the heap, and the resident set of a job that
    embeds part after part creeps up (measured, 5 parts of 10,000 texts: the peak rose 721 -> 1,090 MB tuned,
    but stayed at 537 -> 567 MB with a 1 MiB mapping threshold; docs/benchmarks.md "Embedding at corpus scale").
    A fixed threshold also turns off glibc's own sliding one, so the setting holds for the rest of the process.
    """
    if os.environ.get("BERTKIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False
    _state["malloc"] = applied  # tune_allocator, called later by a loader, leaves this setting alone
    log.info("allocator: allocations over %d KiB mapped and returned on free (streaming: flat memory)",
             threshold_bytes >> 10)
    return applied


def trim_heap(min_interval_s: float = 0.0) -> bool:
    """Give the allocator's free pages back to the OS (glibc ``malloc_trim(0)``, every arena), at most once per
    ``min_interval_s`` seconds in this process. Returns whether it trimmed.

    Why: a long-running server that tokenizes many small requests fragments glibc's heaps; the free memory
    stays resident and the resident set creeps up without a plateau (measured: +8% from 2,000 to 5,000
    requests, whether or not ``tune_allocator`` ran and with 2 arenas as with 16; a trim every ~10 s kept it
    flat; docs/benchmarks.md, "Server memory under steady load"). One trim every few seconds costs nothing
    measurable; one per batch would bring back the page faults ``tune_allocator`` removes.
    """
    now = time.monotonic()
    with _trim_lock:
        if now - _trim_state["last"] < min_interval_s:
            return False
        _trim_state["last"] = now
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    return True


def cache_dir() -> Path:
    """The folder for bertkit's caches (not created here; writers create it)."""
    if os.environ.get("BERTKIT_CACHE_DIR"):
        return Path(os.environ["BERTKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bertkit"


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; None: CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
