"""Issue 15, finding 2: one large request within every limit must not stall other clients. The batcher cuts
requests into slices and serves them round-robin; the queue is bounded (503 + Retry-After); a request has a
deadline; the per-request token budget is a 413 naming it; /metrics shows the queue depth."""

import asyncio
import threading
import time

import pytest
from fastapi.testclient import TestClient

from bertkit.serve.batcher import MicroBatcher, QueueFull, RequestTimeout, plan_slices


class SlowEngine:
    """A fake engine taking ``per_item`` seconds per item; records each call's items."""

    def __init__(self, per_item: float = 0.01) -> None:
        self.per_item, self.calls, self.lock = per_item, [], threading.Lock()

    def __call__(self, items, **params):
        with self.lock:
            self.calls.append(list(items))
        time.sleep(self.per_item * len(items))
        return [f"r-{x}" for x in items]


def test_plan_slices():
    assert plan_slices([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert plan_slices([10, 1, 1], 4) == [(0, 1), (1, 3)]  # an item over the budget is a slice of its own
    assert plan_slices([1] * 5, 100) == [(0, 5)]
    assert plan_slices([], 8) == []


def test_a_small_request_shares_the_next_call_of_a_large_one():
    """Before: the 64-item request was one engine call and the small one waited for all of it. Now the large
    one runs in 8-item slices and the small one rides along with the next slice."""
    engine = SlowEngine(per_item=0.01)
    b = MicroBatcher("t", engine, max_batch_tokens=90, max_wait_ms=0, slice_tokens=8 * 10)  # 1 slice + small

    async def main():
        big = asyncio.ensure_future(b.submit([f"big{i}" for i in range(64)], [10] * 64))
        await asyncio.sleep(0.03)  # the first slice is running
        t0 = time.perf_counter()
        small = await b.submit(["small"], [5])
        small_latency = time.perf_counter() - t0
        big_result = await big
        return small, small_latency, big_result

    try:
        small, small_latency, big_result = asyncio.run(main())
    finally:
        b.close()
    assert small == ["r-small"] and big_result == [f"r-big{i}" for i in range(64)]  # each its own, in order
    assert small_latency < 0.4  # two 8-item slices at most (~0.2 s), not the whole 64-item call (~0.64 s)
    assert len(engine.calls) == 8 and all(len(c) <= 9 for c in engine.calls)
    assert sum("small" in c for c in engine.calls) == 1 and any(len(c) == 9 for c in engine.calls)


def test_two_large_requests_take_turns():
    engine = SlowEngine(per_item=0.001)
    b = MicroBatcher("t", engine, max_batch_tokens=16, max_wait_ms=100, slice_tokens=8)  # b joins the first call

    async def main():
        return await asyncio.gather(b.submit([f"a{i}" for i in range(32)], [1] * 32),
                                    b.submit([f"b{i}" for i in range(32)], [1] * 32))

    try:
        a, c = asyncio.run(main())
    finally:
        b.close()
    assert a == [f"r-a{i}" for i in range(32)] and c == [f"r-b{i}" for i in range(32)]
    # round-robin: once both are queued, every call holds one slice of each (the first may start before b
    # arrives, the last may hold b's remainder)
    middle = engine.calls[1:-1]
    assert middle and all(sum(x.startswith("a") for x in call) == 8 and sum(x.startswith("b") for x in call) == 8
                          for call in middle), engine.calls


def test_calls_are_kept_to_the_time_budget():
    """With max_call_ms, a call holds about what the engine runs in that time (measured), so a newcomer waits
    about one call; without it, a lone request fills max_batch_tokens."""
    engine = SlowEngine(per_item=0.002)  # 1 token an item: 500 tokens/s
    timed = MicroBatcher("t", engine, max_wait_ms=0, slice_tokens=5, max_call_ms=40)  # ~20 tokens a call
    assert timed.call_budget() == 80  # before any measurement: the 2,000 tokens/s prior

    async def main(b, n):
        return await b.submit(list(range(n)), [1] * n)

    try:
        assert asyncio.run(main(timed, 400)) == [f"r-{i}" for i in range(400)]
    finally:
        timed.close()
    later = [len(c) for c in engine.calls[5:]]
    assert later and all(5 <= n <= 40 for n in later), later  # converged near 20 (500 tokens/s x 40 ms)
    untimed = MicroBatcher("t", SlowEngine(0.0), max_batch_tokens=300, max_wait_ms=0, slice_tokens=5)
    assert untimed.call_budget() == 300


def test_queue_limit_is_queue_full_with_retry_after():
    release = threading.Event()

    def blocked(items, **params):
        release.wait(10)
        return items

    async def main(b, sizes, refused, match):
        running = [asyncio.ensure_future(b.submit([f"x{i}"], [n])) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.1)
        with pytest.raises(QueueFull, match=match) as e:
            await b.submit(["refused"], [refused])
        assert 1 <= e.value.retry_after <= 120
        release.set()
        done = await asyncio.gather(*running)
        release.clear()
        return done

    by_count = MicroBatcher("t", blocked, max_wait_ms=0, max_queue_requests=2)
    by_tokens = MicroBatcher("t", blocked, max_wait_ms=0, max_queue_tokens=100, enabled=False)  # no merging
    try:
        assert asyncio.run(main(by_count, [10, 10], 1, "2 requests are queued")) == [["x0"], ["x1"]]
        # the first request is running; the second's 60 tokens wait; 60 + 50 > 100
        assert asyncio.run(main(by_tokens, [10, 60], 50, "60 tokens are queued and this request adds 50")) == \
            [["x0"], ["x1"]]
    finally:
        release.set()
        by_count.close()
        by_tokens.close()
    for b in (by_count, by_tokens):
        assert b.queued_requests == 0 and b.queued_tokens == 0  # everything counted out again


def test_timeout_drops_the_rest_of_a_request():
    engine = SlowEngine(per_item=0.05)
    b = MicroBatcher("t", engine, max_batch_tokens=2, max_wait_ms=0, slice_tokens=2, timeout_s=0.3)

    async def main():
        with pytest.raises(RequestTimeout, match=r"not done within 0\.3 s"):
            await b.submit(list(range(40)), [1] * 40)  # 20 slices of 0.1 s: 2 s of work
        await asyncio.sleep(0.3)
        return len(engine.calls)

    try:
        calls = asyncio.run(main())
    finally:
        b.close()
    assert calls <= 5  # the remaining slices never ran
    assert b.queued_requests == 0 and b.queued_tokens == 0


def test_begin_shutdown_refuses_new_work_and_fails_what_outlives_the_grace():
    from bertkit.serve.batcher import BatcherClosed

    engine = SlowEngine(per_item=0.05)
    b = MicroBatcher("t", engine, max_batch_tokens=1, max_wait_ms=0, slice_tokens=1)

    async def main():
        quick = asyncio.ensure_future(b.submit(["q"], [1]))
        slow = asyncio.ensure_future(b.submit(list(range(100)), [1] * 100))  # 5 s of work
        await asyncio.sleep(0.02)
        b.begin_shutdown(0.5)
        with pytest.raises(BatcherClosed, match="shutting down"):
            await b.submit(["late"], [1])
        t0 = time.perf_counter()
        results = await asyncio.gather(quick, slow, return_exceptions=True)
        return results, time.perf_counter() - t0

    try:
        (quick, slow), waited = asyncio.run(main())
    finally:
        b.close()
    assert quick == ["r-q"]
    assert isinstance(slow, BatcherClosed) and "grace period" in str(slow) and waited < 2


# ---- through the app ----------------------------------------------------------------------------------------------
def test_token_budget_is_413_naming_it(services, make_app):
    with TestClient(make_app(services["encoder"], max_request_tokens=20, max_body_bytes=1 << 16)) as client:
        r = client.post("/v1/embeddings", json={"input": ["one two three four five six"] * 4})
        assert r.status_code == 413
        err = r.json()["error"]
        assert err["code"] == "too_many_tokens" and "max_request_tokens" in err["message"]
        assert "at most 20 per request" in err["message"]
        assert client.post("/v1/embeddings", json={"input": ["one two"]}).status_code == 200


def test_metrics_show_queue_depth(services, make_app):
    with TestClient(make_app(services["encoder"])) as client:
        client.post("/v1/embeddings", json={"input": ["a b c"]})
        text = client.get("/metrics").text
    assert 'bertkit_queue_requests{capability="embeddings"} 0.0' in text
    assert 'bertkit_queue_tokens{capability="embeddings"} 0.0' in text
    assert "bertkit_rejected_requests_total" in text or "bertkit_rejected_requests" in text


def test_queue_full_is_503_with_retry_after(services, make_app, monkeypatch):
    service = services["encoder"]
    release = threading.Event()
    embed = service.embed

    def blocked(*args, **kwargs):
        release.wait(10)
        return embed(*args, **kwargs)
    monkeypatch.setattr(service, "embed", blocked)
    app = make_app(service, max_queue_requests=1, max_wait_ms=0)

    async def main():
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "first"}))
            await asyncio.sleep(0.3)
            second = await client.post("/v1/embeddings", json={"input": "second"})
            release.set()
            return await first, second

    try:
        first, second = asyncio.run(main())
    finally:
        release.set()
        app.state.batchers["embeddings"].close()
    assert first.status_code == 200
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
    err = second.json()["error"]
    assert err["code"] == "overloaded" and err["type"] == "server_error" and "retry later" in err["message"]


def test_the_worker_trims_the_heap_at_most_once_per_interval(monkeypatch):
    """Issue 15, finding 4: the resident set crept up under steady load (heap fragmentation; measured in
    benchmarks/serve_soak.py). The worker hands free memory back every trim_interval_s."""
    import bertkit.serve.batcher as batcher_module
    from bertkit.utils.runtime import trim_heap

    intervals = []
    monkeypatch.setattr(batcher_module, "trim_heap", lambda interval: intervals.append(interval))
    b = MicroBatcher("t", SlowEngine(0.0), max_wait_ms=0, trim_interval_s=7.0)

    async def main():
        for i in range(3):
            await b.submit([i], [1])

    try:
        asyncio.run(main())
    finally:
        b.close()
    assert intervals == [7.0, 7.0, 7.0]  # asked after each call; trim_heap itself keeps the pace
    assert trim_heap(0.0) is True and trim_heap(3600.0) is False  # rate-limited across the process
