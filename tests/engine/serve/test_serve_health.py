"""Readiness tells the truth: with the render wedged (every UNet call blocks, as a hung device
would), calls fail one by one by the watchdog and /health says 503 "stuck" with the reason while
work is admitted and nothing completes; once the wedged requests have failed it says 200 again.
The second request's render never runs beside the wedged one (one call at a time per device)."""
from __future__ import annotations

import threading
import time

import httpx2 as httpx

from tests.helpers.fake_lmm import FakeLMM
from tests.engine.serve.serve_helpers import running, serve_engine

TEXT = {"text": "a brown dog runs on green grass", "missing": "image", "candidates": 1, "steps": 2}


def test_health_says_stuck_while_the_render_is_wedged(cfg, engine):
    gen = engine.models().generators[0]
    wedge = threading.Event()
    stuck: set = set()
    hook = gen.base.unet.register_forward_pre_hook(lambda m, a: (stuck.add(threading.current_thread()), wedge.wait(60)))
    try:
        with running(serve_engine(cfg, engine, FakeLMM(), run={"stage_timeout_s": 2.0})) as (url, svc):
            jobs = [httpx.post(f"{url}/v1/jobs", json={**TEXT, "sample_id": f"w:{i}"}).json()["id"] for i in range(2)]
            seen = None
            end = time.time() + 60
            while svc.active and seen is None:
                h = httpx.get(f"{url}/health")
                if h.status_code == 503:
                    seen = h.json()
                assert time.time() < end
                time.sleep(0.02)
            assert seen is not None and seen["status"] == "unavailable" and seen["reason"].startswith("stuck"), seen
            assert "run.stage_timeout_s" in seen["reason"]
            while svc.active:
                assert time.time() < end
                time.sleep(0.05)
            for j in jobs:
                st = httpx.get(f"{url}/v1/jobs/{j}").json()
                assert st["status"] == "error" and st["error"]["error"]["stage"] == "render"
                assert "did not return within 2 s" in st["error"]["error"]["message"]
            assert len(stuck) == 1  # the replacement thread waited for the device and then skipped its call
            assert httpx.get(f"{url}/health").status_code == 200
            assert httpx.head(f"{url}/health").status_code == 200 and httpx.head(f"{url}/metrics").status_code == 200
    finally:
        wedge.set()
        hook.remove()
        for t in stuck:  # the abandoned render finishes before the shared generator is used again
            t.join(120)
