"""``bertkit serve``: an HTTP server (FastAPI + uvicorn) for embeddings, classification, NER and fill-mask,
with dynamic micro-batching of concurrent requests.

The names below load on first use, so ``bertkit.serve.config`` (the limits) can be read without the web stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MicroBatcher", "ServerConfig", "Service", "create_app", "load_service"]

_HOMES = {"MicroBatcher": "bertkit.serve.batcher", "ServerConfig": "bertkit.serve.config",
          "Service": "bertkit.serve.service", "create_app": "bertkit.serve.app",
          "load_service": "bertkit.serve.service"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'bertkit.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
