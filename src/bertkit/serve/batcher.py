"""Dynamic micro-batching with fair sharing: concurrent requests become shared engine calls, and no request,
however large, holds the worker while others wait.

Request handlers ``await batcher.submit(items, tokens, **params)`` (``tokens``: one count per item, or the
total). The request is cut into **slices** of consecutive items of at most ``slice_tokens`` tokens (an item
longer than that is a slice of its own). One worker thread (inference runs off the event loop; torch releases
the GIL) builds each engine call **round-robin**: it takes the next slice of the request at the head of the
queue, then one slice from each request behind it with the same ``params``, while the call stays within
``max_batch_tokens``; every request that still has slices goes to the back of the queue. So a 256-text request
runs as a series of small calls, and a 1-text request that arrives meanwhile shares the very next call instead
of waiting for the whole of it. The first slice of a fresh request may wait up to ``max_wait_ms`` (from its
arrival) for others to join. Each call is ONE ``run(all_items, **params)`` (the engine sorts by length and
packs); the results are split back, and a request's future resolves when its last slice is done.

Bounds: at most ``max_queue_requests`` requests and ``max_queue_tokens`` tokens admitted at once (more: a
``QueueFull`` carrying a Retry-After estimate); a request not done within ``timeout_s`` is dropped
(``RequestTimeout``) and its remaining slices never run. ``begin_shutdown(grace_s)`` takes no new work and
fails whatever is not done when the grace period ends with ``BatcherClosed``.

If a merged call fails, each of its slices is run alone once, so one bad request fails only itself. Every
``trim_interval_s`` under load the worker hands free heap memory back to the OS (see ``trim_heap``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bertkit.serve.metrics import Metrics
from bertkit.utils.runtime import trim_heap

log = logging.getLogger("bertkit")


class BatcherClosed(RuntimeError):
    """The server is shutting down and takes no new work (or ran out of its grace period for this request)."""


class QueueFull(RuntimeError):
    """The queue holds as much work as it may; ``retry_after`` is an estimate, in seconds, of when it drains."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(RuntimeError):
    """The request was not done within the batcher's timeout; its remaining work was dropped."""


@dataclass(eq=False)
class _Request:
    items: list[Any]
    counts: list[int]  # tokens of each item
    params: dict[str, Any]
    key: tuple[tuple[str, Any], ...]  # requests with the same key may share an engine call
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    slices: list[tuple[int, int]]  # [start, end) item ranges, in order
    arrived: float = field(default_factory=time.perf_counter)
    next_slice: int = 0  # the next slice to hand to an engine call
    results: list[list[Any] | None] = field(default_factory=list)  # per slice, filled by the worker
    slices_done: int = 0
    failed: bool = False  # a slice failed: the rest are skipped
    forgotten: bool = False  # taken out of the queue counts (resolved, timed out or abandoned)

    @property
    def tokens(self) -> int:
        return sum(self.counts)

    def slice_tokens(self, i: int) -> int:
        start, end = self.slices[i]
        return sum(self.counts[start:end])

    @property
    def finished(self) -> bool:
        """Nothing more to run: all slices handed out, or the caller no longer waits (done, failed, cancelled)."""
        return self.failed or self.future.done() or self.next_slice >= len(self.slices)


def plan_slices(counts: Sequence[int], slice_tokens: int) -> list[tuple[int, int]]:
    """Consecutive item ranges of at most ``slice_tokens`` tokens (an item over the budget alone)."""
    slices, start, total = [], 0, 0
    for i, n in enumerate(counts):
        if i > start and total + n > slice_tokens:
            slices.append((start, i))
            start, total = i, 0
        total += n
    if start < len(counts):
        slices.append((start, len(counts)))
    return slices


class MicroBatcher:
    def __init__(self, name: str, run: Callable[..., Sequence[Any]], max_batch_tokens: int = 8192,
                 max_wait_ms: float = 5.0, enabled: bool = True, metrics: Metrics | None = None,
                 slice_tokens: int | None = None, max_queue_requests: int | None = None,
                 max_queue_tokens: int | None = None, timeout_s: float | None = None,
                 trim_interval_s: float | None = None, max_call_ms: float | None = None) -> None:
        """run(items, **params) -> one result per item, in order. enabled=False: every engine call serves one
        slice of one request (no merging). slice_tokens None: a request is one slice (no splitting). The queue
        bounds and the timeout are off when None. trim_interval_s: after an engine call, hand free heap memory
        back to the OS if this long has passed since the last time (``utils/runtime.trim_heap``). max_call_ms:
        keep each engine call to about this long, by the measured tokens/s (None: only max_batch_tokens)."""
        if max_batch_tokens < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch_tokens must be >= 1 and max_wait_ms >= 0, got {max_batch_tokens} "
                             f"and {max_wait_ms}")
        for what, value in (("slice_tokens", slice_tokens), ("max_queue_requests", max_queue_requests),
                            ("max_queue_tokens", max_queue_tokens), ("timeout_s", timeout_s),
                            ("max_call_ms", max_call_ms)):
            if value is not None and value <= 0:
                raise ValueError(f"{what} must be > 0 (or None: no limit), got {value}")
        self.name = name
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.enabled = enabled
        self.metrics = metrics
        self.slice_tokens = slice_tokens
        self.max_queue_requests = max_queue_requests
        self.max_queue_tokens = max_queue_tokens
        self.timeout_s = timeout_s
        self.trim_interval_s = trim_interval_s
        self.max_call_s = None if max_call_ms is None else max_call_ms / 1000
        self.calls = 0  # engine calls made (tests and logs: fewer than requests means batching merged)
        self.queued_requests = 0  # admitted and not yet resolved
        self.queued_tokens = 0  # tokens of the slices not yet run
        self._tokens_per_s = 2000.0  # throughput (moving average over calls): the call budget and Retry-After
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._draining = False
        self._grace_timer: threading.Timer | None = None
        self._running: list[_Request] = []  # the requests of the engine call in progress (for _expire)
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.queue_requests.labels(name).set_function(lambda: self.queued_requests)
            metrics.queue_tokens.labels(name).set_function(lambda: self.queued_tokens)

    # ---- request side (event loop) --------------------------------------------------------
    async def submit(self, items: Sequence[Any], tokens: int | Sequence[int], **params: Any) -> list[Any]:
        """Queue ``items`` (``tokens``: per item, or the total) and wait for their results, in order.

        Raises QueueFull (no room), RequestTimeout (not done within timeout_s), BatcherClosed (shutting down).
        """
        items = list(items)
        if isinstance(tokens, int):  # a total: spread over the items
            counts = [tokens // len(items) + (i < tokens % len(items)) for i in range(len(items))] if items else []
        else:
            counts = [int(n) for n in tokens]
            if len(counts) != len(items):
                raise ValueError(f"{len(items)} items but {len(counts)} token counts")
        whole = [(0, len(items))] if items else []
        slices = plan_slices(counts, self.slice_tokens) if self.slice_tokens else whole
        loop = asyncio.get_running_loop()
        req = _Request(items, counts, params, tuple(sorted(params.items())), loop.create_future(), loop, slices)
        req.results = [None] * len(slices)
        if not slices:
            return []
        with self._cond:
            if self._closing or self._draining:
                self._reject("shutting_down")
                raise BatcherClosed(f"{self.name}: the server is shutting down")
            self._admit(req)
            if self._thread is None:  # started on first use: an app that never serves starts no thread
                self._thread = threading.Thread(target=self._work, name=f"bertkit-batcher-{self.name}",
                                                daemon=True)
                self._thread.start()
            self._queue.append(req)
            self._cond.notify()
        try:
            if self.timeout_s is None:
                return await req.future
            return await asyncio.wait_for(req.future, self.timeout_s)  # cancels the future: its slices are dropped
        except TimeoutError:
            self._reject("timeout")
            raise RequestTimeout(f"{self.name}: the request was not done within {self.timeout_s:g} s") from None
        finally:
            if not req.future.done():  # the caller went away (cancelled): drop the rest of its work
                req.future.cancel()
            self._forget(req)

    def _admit(self, req: _Request) -> None:
        """Count ``req`` in, or QueueFull (called holding the lock). An empty queue always admits (a request
        over max_queue_tokens on its own is the per-request budget's business, not the queue's)."""
        busy = self.queued_requests > 0
        if busy and self.max_queue_requests is not None and self.queued_requests >= self.max_queue_requests:
            self._reject("queue_full")
            raise QueueFull(f"{self.name}: {self.queued_requests} requests are queued, the most allowed "
                            f"(max_queue_requests); retry later", self._retry_after())
        if busy and self.max_queue_tokens is not None and self.queued_tokens + req.tokens > self.max_queue_tokens:
            self._reject("queue_full")
            raise QueueFull(f"{self.name}: {self.queued_tokens} tokens are queued and this request adds "
                            f"{req.tokens}; at most {self.max_queue_tokens} may wait (max_queue_tokens); retry "
                            f"later", self._retry_after())
        self.queued_requests += 1
        self.queued_tokens += req.tokens

    def _forget(self, req: _Request) -> None:
        """Take a resolved (or abandoned) request out of the queue counts, once."""
        with self._cond:
            if req.forgotten:
                return
            unrun = sum(req.slice_tokens(i) for i in range(req.next_slice, len(req.slices)))
            self.queued_requests -= 1
            self.queued_tokens -= unrun
            req.next_slice = len(req.slices)  # nothing of it runs any more
            req.forgotten = True

    def _retry_after(self) -> int:
        """Seconds until the queued tokens are likely done, by the measured throughput; 1..120."""
        return max(1, min(120, math.ceil(self.queued_tokens / max(self._tokens_per_s, 1.0))))

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(self.name, reason).inc()

    def begin_shutdown(self, grace_s: float) -> None:
        """Take no new requests; let queued ones run for ``grace_s`` seconds, then fail what is left with
        BatcherClosed (its callers answer 503 at once, even while an engine call is still running)."""
        with self._cond:
            if self._draining:
                return
            self._draining = True
            self._cond.notify_all()
        self._grace_timer = threading.Timer(grace_s, self._expire)
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _expire(self) -> None:
        with self._cond:
            pending = [r for r in self._queue if not r.future.done()]
            running = list(self._running)
        error = BatcherClosed(f"{self.name}: the server is shutting down and could not finish this request in "
                              "its grace period")
        for r in {id(r): r for r in pending + running}.values():
            self._reject("shutting_down")
            _resolve(r, error=error)

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish every queued and running one, then stop the worker (blocks)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._grace_timer is not None:
            self._grace_timer.cancel()

    # ---- worker thread --------------------------------------------------------------------
    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            if self.metrics is not None:
                for r, i in batch:
                    if i == 0:
                        self.metrics.queue_wait.labels(self.name).observe(start - r.arrived)
            self._running = [r for r, _ in batch]
            try:
                self._run(batch)
            except Exception as e:
                if len(batch) == 1:
                    self._fail(batch[0][0], e)
                    continue
                log.warning("%s: a merged call of %d slices failed (%s: %s); running them one by one",
                            self.name, len(batch), type(e).__name__, e)
                for r, i in batch:
                    try:
                        self._run([(r, i)])
                    except Exception as e1:
                        self._fail(r, e1)
            finally:
                self._running = []
            if self.trim_interval_s:  # fragmentation otherwise grows the resident set without a plateau
                trim_heap(self.trim_interval_s)

    def _next_batch(self) -> list[tuple[_Request, int]] | None:
        """Block until there is work; return the (request, slice) pairs of the next engine call (None: closed and
        drained).

        Round-robin passes: the head request's next slice, then one slice from each request behind it with the
        same params, in queue order; then another pass, and so on, while the call stays within its budget
        (``call_budget``). A fresh head request waits up to ``max_wait`` for others to join. Requests with
        slices left go to the back of the queue, in the order they were served.
        """
        with self._cond:
            while True:
                while self._queue and self._queue[0].finished:
                    self._queue.popleft()  # done, failed, timed out or cancelled: nothing left to run
                if self._queue:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [(first, self._take(first))]
            tokens = first.slice_tokens(batch[0][1])
            served = [first]
            budget = self.call_budget()
            deadline = first.arrived + self.max_wait
            this_pass = {id(first)}  # the requests given a slice in this pass; the head's opened the first
            while tokens < budget:
                added = False
                # one slice each: requests not yet in this call first (in queue order), then those already in it
                for r in [*self._queue, *served]:
                    if (id(r) in this_pass or r.finished or r.key != first.key
                            or (not self.enabled and r is not first)):
                        continue
                    n = r.slice_tokens(r.next_slice)
                    if tokens + n > budget:
                        continue
                    if r not in served:
                        self._queue.remove(r)
                        served.append(r)
                    batch.append((r, self._take(r)))
                    this_pass.add(id(r))
                    tokens += n
                    added = True
                if added or this_pass:  # a new pass, in which every request may take one more slice
                    this_pass = set()
                    continue
                remaining = deadline - time.perf_counter()
                if not self.enabled or remaining <= 0 or self._closing or self._draining:
                    break
                self._cond.wait(remaining)  # room left: a request arriving now may join
            self._queue.extend(r for r in served if not r.finished)
            return batch

    def call_budget(self) -> int:
        """Tokens the next engine call may hold: ``max_batch_tokens``, and with ``max_call_ms`` no more than the
        measured throughput runs in that time, so that a request arriving during a call waits at most about
        that long for the next one (at least one slice always runs)."""
        if self.max_call_s is None:
            return self.max_batch_tokens
        return max(1, min(self.max_batch_tokens, int(self._tokens_per_s * self.max_call_s)))

    def _take(self, r: _Request) -> int:
        """Hand out ``r``'s next slice (called holding the lock)."""
        i = r.next_slice
        r.next_slice += 1
        self.queued_tokens -= r.slice_tokens(i)
        return i

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        """One engine call for the batch's slices; each request collects its slice of the results."""
        live = [(r, i) for r, i in batch if not r.future.done() and not r.failed]  # skip abandoned requests
        if not live:
            return
        items = [x for r, i in live for x in r.items[slice(*r.slices[i])]]
        tokens = sum(r.slice_tokens(i) for r, i in live)
        self.calls += 1
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(len(items))
            self.metrics.batch_tokens.labels(self.name).observe(tokens)
        t0 = time.perf_counter()
        results = self.run(items, **live[0][0].params)
        seconds = time.perf_counter() - t0
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(items)} items gave {len(results)} results")
        if seconds > 0:
            self._tokens_per_s = 0.8 * self._tokens_per_s + 0.2 * tokens / seconds
        start = 0
        for r, i in live:
            n = r.slices[i][1] - r.slices[i][0]
            r.results[i] = list(results[start:start + n])
            start += n
            r.slices_done += 1
            if r.slices_done == len(r.slices):
                _resolve(r, result=[x for part in r.results for x in part])  # type: ignore[union-attr]

    def _fail(self, r: _Request, error: BaseException) -> None:
        r.failed = True  # its other slices are skipped
        _resolve(r, error=error)


def _resolve(req: _Request, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a request's future from a worker thread, on the loop that owns it."""
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
