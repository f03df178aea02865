"""``ServerConfig``: every limit and setting of the HTTP server, with its default, in one place.

It imports nothing heavy, so the command line can show the defaults without loading the web stack. The docs'
Limits page (docs/limits.md, Server limits) lists the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    """Every limit the server enforces, with its default (docs/limits.md, Server limits: the same list)."""

    max_texts_per_request: int = 256
    max_body_bytes: int = 1 << 20
    batching: bool = True  # False: one request per engine call (the baseline batching is measured against)
    max_batch_tokens: int = 8192  # merge requests up to this many tokens per engine call
    max_wait_ms: float = 5.0  # how long the oldest queued request may wait for others to join it
    # fairness and bounds (serve/batcher.py)
    max_request_tokens: int = 65536  # tokens one request may hold, after truncation (more: 413)
    slice_tokens: int = 256  # a request runs in slices of this many tokens, interleaved with other requests'
    max_call_ms: float = 250.0  # an engine call holds what runs in about this long (by measured tokens/s)
    max_queue_requests: int = 1024  # requests admitted at once per endpoint (more: 503 + Retry-After)
    max_queue_tokens: int = 262144  # tokens admitted at once per endpoint (more: 503 + Retry-After)
    request_timeout_s: float = 60.0  # a request not answered by then gets a 503 and its remaining work is dropped
    body_timeout_s: float = 30.0  # the whole body must arrive within this (else 408)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (else 408, connection closed)
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    heap_trim_s: float = 10.0  # hand free heap memory back to the OS at most this often under load (0: never)
    # lifecycle and access
    shutdown_grace_s: float = 20.0  # on SIGTERM: queued work may finish for this long, the rest gets a 503
    api_key: str | None = None  # require Authorization: Bearer <api_key>
    open_paths: tuple[str, ...] = ("/healthz", "/metrics", "/docs", "/openapi.json")  # no key needed
    accept_any_model: bool = False  # False: a request's "model" other than the served one is a 404

    def __post_init__(self) -> None:
        for name in ("max_texts_per_request", "max_body_bytes", "max_batch_tokens", "max_request_tokens",
                     "slice_tokens", "max_queue_requests", "max_queue_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "body_timeout_s", "header_timeout_s", "keep_alive_s", "max_call_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_wait_ms", "shutdown_grace_s", "heap_trim_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
