"""``kbridge serve`` when its LMM engine dies (a backend reporting ``dead``, as the HTTP backend
does when its server is gone and the in-process vLLM backend when its engine core died): the
request in flight fails with its own error, the requests waiting for admission and every later
one get a clear 503 at once (none waits for its timeout), and /health says 503 with the reason.
The real engine's death: tests/vllm/test_vllm_inprocess.py."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx

from kbridge.engine import data as D
from tests.helpers.fake_lmm import DyingLMM
from tests.engine.serve.serve_helpers import running, serve_engine
from tests.engine.serve.test_serve_agreement import _request


def test_a_dead_engine_answers_503_and_health_says_why(cfg, engine):
    ds = D.open_dataset(None)
    bodies = [_request(ds, i, ds.missing[i]) for i in sorted(ds.missing)[:3]]
    lmm = DyingLMM(die_after=0)  # the first request finds it dead
    eng = serve_engine(cfg, engine, lmm, run={"rows_in_flight": 1}, request_timeout_s=60)
    with running(eng) as (url, svc):
        with httpx.Client(timeout=90) as client, ThreadPoolExecutor(3) as pool:
            resps = list(pool.map(lambda b: client.post(f"{url}/v1/complete", json=b), bodies))
        codes = sorted(r.status_code for r in resps)
        assert codes in ([500, 503, 503], [503, 503, 503]), [r.text[:200] for r in resps]
        for r in resps:
            msg = r.json()["error"]["message"]
            if r.status_code == 500:  # the one in flight: its own stage error, naming the server
                assert "LMM server" in msg and "is gone" in msg, msg
            else:
                assert "the LMM engine died" in msg and "restart kbridge serve" in msg, msg
        assert len(set(lmm.refused)) <= 1  # one sample reached the dead engine: none was admitted after it
        h = httpx.get(f"{url}/health", timeout=10)
        assert h.status_code == 503 and "the LMM engine died" in h.json()["reason"], h.text
        late = httpx.post(f"{url}/v1/complete", json=bodies[0], timeout=30)
        assert late.status_code == 503 and "the LMM engine died" in late.json()["error"]["message"], late.text
