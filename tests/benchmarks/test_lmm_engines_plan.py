"""``kbridge bench lmm --engines``: each level sends its own number of requests (the first N of the
workload) with exactly its number in flight, per request (vLLM, HTTP) or in batches of that size
(hf), after a two-request warm-up. The engines are the benchmark's business; this checks the
harness that times them, with a generator that only counts."""
import asyncio

import pytest

from kbridge.benchmarks.lmm_engines import QUICK, REQUESTS, _level_rows
from kbridge.engine.lmm import Generation


def test_every_level_of_the_full_mode_reaches_its_concurrency():
    assert list(REQUESTS) == [1, 8, 32] and all(n >= k for k, n in REQUESTS.items())
    assert all(QUICK[k] <= REQUESTS[k] for k in QUICK)


@pytest.mark.parametrize("per_call", [True, False])
def test_each_level_sends_its_requests_with_its_concurrency(per_call):
    live, calls = [0], []

    async def generate(reqs):
        live[0] += len(reqs)
        calls.append((list(reqs), live[0]))
        await asyncio.sleep(0.002)
        live[0] -= len(reqs)
        return [Generation("{}", 5, 2) for _ in reqs]

    reqs = list(range(max(REQUESTS.values())))
    rows = _level_rows("x", generate, reqs, per_call, REQUESTS)
    assert [(r["in_flight"], r["requests"]) for r in rows] == list(REQUESTS.items())
    assert all(r["gen_tok_per_s"] > 0 and r["p50_s"] <= r["p95_s"] for r in rows)
    calls = calls[2 if per_call else 1:]  # after the warm-up
    for k, n in REQUESTS.items():
        level = []
        while sum(len(c[0]) for c in level) < n:
            level.append(calls.pop(0))
        assert sorted(x for c in level for x in c[0]) == reqs[:n]  # the first n, each once
        assert max(c[1] for c in level) == k  # never more than k in flight, and k reached
    assert not calls
