"""MicroBatcher: merging, splitting, params, token budget, failure isolation, drain on close; and concurrent
HTTP callers each getting exactly their own embeddings."""

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from bertkit.serve.batcher import BatcherClosed, MicroBatcher


class Recorder:
    """A fake engine: results are (item, params) so every caller can check it got its own; records calls."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list, dict]] = []
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, items, **params):
        self.calls.append((list(items), params))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [(x, params.get("p")) for x in items]


def gather(batcher, requests):
    """Submit every (items, tokens, params) at once from one event loop; results (or exceptions) in order."""
    async def main():
        return await asyncio.gather(*(batcher.submit(items, tokens, **params) for items, tokens, params in requests),
                                    return_exceptions=True)
    try:
        return asyncio.run(main())
    finally:
        batcher.close()


def test_merges_and_splits_in_order():
    run = Recorder(delay=0.01)
    b = MicroBatcher("t", run, max_batch_tokens=1000, max_wait_ms=50)
    requests = [([f"r{i}-{j}" for j in range(i % 3 + 1)], 5, {}) for i in range(20)]
    results = gather(b, requests)
    for (items, _, _), got in zip(requests, results, strict=True):
        assert got == [(x, None) for x in items]
    assert b.calls == len(run.calls) < 20  # merged
    assert sum(len(items) for items, _ in run.calls) == sum(len(r[0]) for r in requests)


def test_disabled_runs_one_request_per_call():
    run = Recorder()
    b = MicroBatcher("t", run, max_wait_ms=50, enabled=False)
    requests = [([f"r{i}", f"s{i}"], 5, {}) for i in range(6)]
    results = gather(b, requests)
    assert [items for items, _ in run.calls] == [r[0] for r in requests]
    assert results == [[(x, None) for x in r[0]] for r in requests]


def test_different_params_never_share_a_call():
    run = Recorder()
    b = MicroBatcher("t", run, max_wait_ms=20)
    requests = [([f"r{i}"], 1, {"p": i % 2}) for i in range(12)]
    results = gather(b, requests)
    assert results == [[(f"r{i}", i % 2)] for i in range(12)]
    for items, params in run.calls:
        assert all(int(x[1:]) % 2 == params["p"] for x in items)


def test_token_budget_caps_a_merged_call():
    run = Recorder()
    b = MicroBatcher("t", run, max_batch_tokens=10, max_wait_ms=20)
    gather(b, [([f"r{i}"], 4, {}) for i in range(9)] + [(["big"], 50, {})])
    assert all(len(items) <= 2 for items, _ in run.calls)  # 3 x 4 tokens > 10
    assert (["big"], {}) in run.calls  # a request over the budget runs alone


def test_a_failing_request_fails_only_itself():
    run = Recorder(fail_on="bad")
    b = MicroBatcher("t", run, max_wait_ms=50)
    results = gather(b, [(["a"], 1, {}), (["bad"], 1, {}), (["c", "d"], 1, {})])
    assert results[0] == [("a", None)] and results[2] == [("c", None), ("d", None)]
    assert isinstance(results[1], ValueError) and "cannot do bad" in str(results[1])
    assert len(run.calls[0][0]) == 4  # they were merged first, then retried one by one


def test_close_finishes_queued_work_then_refuses():
    run = Recorder(delay=0.05)
    b = MicroBatcher("t", run, max_batch_tokens=1, max_wait_ms=0)  # one request per call: a queue builds up

    async def main():
        tasks = [asyncio.ensure_future(b.submit([i], 1)) for i in range(5)]
        await asyncio.sleep(0.01)
        closer = asyncio.get_running_loop().run_in_executor(None, b.close)  # blocks until drained
        results = await asyncio.gather(*tasks)
        await closer
        with pytest.raises(BatcherClosed):
            await b.submit([9], 1)
        return results

    assert asyncio.run(main()) == [[(i, None)] for i in range(5)]
    assert b._thread is not None and not b._thread.is_alive()


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_http_callers_get_their_own_embeddings(services, make_app, batching):
    service = services["encoder"]
    app = make_app(service, batching=batching, max_wait_ms=50)
    texts = [[f"caller {i} text {j} " + "word " * (i % 5) for j in range(i % 3 + 1)] for i in range(24)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": t}) for t in texts))

    responses = asyncio.run(main())
    app.state.batchers["embeddings"].close()
    for t, r in zip(texts, responses, strict=True):
        assert r.status_code == 200
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, service.encoder.embed(t), atol=1e-5)
    calls = app.state.batchers["embeddings"].calls
    samples = {s.name: s.value for m in app.state.metrics.registry.collect() for s in m.samples}
    assert samples["bertkit_batch_size_count"] == calls
    if batching:
        assert calls < len(texts)
    else:
        assert calls == len(texts)


def test_worker_thread_is_not_the_event_loop():
    seen = []
    b = MicroBatcher("t", lambda items: seen.append(threading.current_thread().name) or items)
    gather(b, [([1], 1, {})])
    assert seen == ["bertkit-batcher-t"]
