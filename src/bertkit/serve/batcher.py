"""Dynamic micro-batching: concurrent requests become one engine call.

Request handlers ``await batcher.submit(items, tokens, **params)``. One worker thread (inference runs off
the event loop; torch releases the GIL) takes the oldest queued request and merges the requests queued
behind it while they have the same ``params`` and the merged token count stays within ``max_batch_tokens``,
waiting at most ``max_wait_ms`` (measured from the oldest request's arrival) for more to come. It makes ONE
call ``run(all_items, **params)`` (the engine inside sorts by length and cuts token-budget batches), splits
the results back, and resolves each caller's future on its event loop. While a call runs, new requests
queue up, so under load batches grow by themselves and nobody waits the full ``max_wait_ms``.

If a merged call fails, each of its requests is run alone once, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bertkit.serve.metrics import Metrics

log = logging.getLogger("bertkit")


class BatcherClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


@dataclass
class _Request:
    items: list[Any]
    tokens: int
    params: dict[str, Any]
    key: tuple[tuple[str, Any], ...]  # requests with the same key may share an engine call
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, name: str, run: Callable[..., Sequence[Any]], max_batch_tokens: int = 8192,
                 max_wait_ms: float = 5.0, enabled: bool = True, metrics: Metrics | None = None) -> None:
        """run(items, **params) -> one result per item, in order. enabled=False: every request runs alone."""
        if max_batch_tokens < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch_tokens must be >= 1 and max_wait_ms >= 0, got {max_batch_tokens} "
                             f"and {max_wait_ms}")
        self.name = name
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.enabled = enabled
        self.metrics = metrics
        self.calls = 0  # engine calls made (tests and logs: fewer than requests means batching merged)
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- request side (event loop) --------------------------------------------------------
    async def submit(self, items: Sequence[Any], tokens: int, **params: Any) -> list[Any]:
        """Queue ``items`` (``tokens`` tokens in all) and wait for their results, in order."""
        loop = asyncio.get_running_loop()
        req = _Request(list(items), tokens, params, tuple(sorted(params.items())), loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise BatcherClosed(f"{self.name}: the server is shutting down")
            if self._thread is None:  # started on first use: an app that never serves starts no thread
                self._thread = threading.Thread(target=self._work, name=f"bertkit-batcher-{self.name}",
                                                daemon=True)
                self._thread.start()
            self._queue.append(req)
            self._cond.notify()
        return await req.future

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish every queued and running one, then stop the worker (blocks)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- worker thread --------------------------------------------------------------------
    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            if self.metrics is not None:
                for r in batch:
                    self.metrics.queue_wait.labels(self.name).observe(start - r.arrived)
            try:
                self._run(batch)
            except Exception as e:
                if len(batch) == 1:
                    _resolve(batch[0], error=e)
                    continue
                log.warning("%s: a merged call of %d requests failed (%s: %s); running them one by one",
                            self.name, len(batch), type(e).__name__, e)
                for r in batch:
                    try:
                        self._run([r])
                    except Exception as e1:
                        _resolve(r, error=e1)

    def _next_batch(self) -> list[_Request] | None:
        """Block until there is work; return the requests of the next engine call (None: closed and drained)."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, tokens = [first], first.tokens
            if not self.enabled:
                return batch
            deadline = first.arrived + self.max_wait
            while tokens < self.max_batch_tokens:
                if self._queue:
                    nxt = self._queue[0]
                    if nxt.key != first.key or tokens + nxt.tokens > self.max_batch_tokens:
                        break  # keep arrival order: a different request ends the batch rather than jumping it
                    batch.append(self._queue.popleft())
                    tokens += nxt.tokens
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        """One engine call for the batch's requests; each gets its own slice of the results."""
        live = [r for r in batch if not r.future.done()]  # a cancelled request (client went away) is skipped
        if not live:
            return
        items = [x for r in live for x in r.items]
        self.calls += 1
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(len(items))
            self.metrics.batch_tokens.labels(self.name).observe(sum(r.tokens for r in live))
        results = self.run(items, **live[0].params)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(items)} items gave {len(results)} results")
        start = 0
        for r in live:
            _resolve(r, result=list(results[start:start + len(r.items)]))
            start += len(r.items)


def _resolve(req: _Request, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a request's future from the worker thread, on the loop that owns it."""
    def complete() -> None:
        if req.future.done():  # cancelled meanwhile
            return
        if error is not None:
            req.future.set_exception(error)
        else:
            req.future.set_result(result)

    try:
        req.loop.call_soon_threadsafe(complete)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
