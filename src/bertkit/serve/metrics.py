"""Prometheus metrics of one server, in a registry of its own (so two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bertkit_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("bertkit_request_latency_seconds", "Request latency, body read to response sent",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("bertkit_inflight_requests", "Requests being served now", registry=r)
        self.batch_size = Histogram("bertkit_batch_size", "Texts per engine call (merged requests)",
                                    ["capability"], buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertkit_batch_tokens", "Tokens per engine call (merged requests)",
                                      ["capability"], buckets=_TOKEN_BUCKETS, registry=r)
        self.queue_wait = Histogram("bertkit_queue_wait_seconds", "Time a request waits before its engine call",
                                    ["capability"], buckets=_WAIT_BUCKETS, registry=r)
        self.queue_requests = Gauge("bertkit_queue_requests", "Requests admitted and not yet answered (queue depth)",
                                    ["capability"], registry=r)
        self.queue_tokens = Gauge("bertkit_queue_tokens", "Tokens of the queued work not yet run",
                                  ["capability"], registry=r)
        self.rejected = Counter("bertkit_rejected_requests", "Requests refused or dropped by the batcher, by "
                                "reason (queue_full, timeout, shutting_down)", ["capability", "reason"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
