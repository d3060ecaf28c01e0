"""Cancellation reaches the render: a cancelled 100-step request (DELETE /v1/jobs/{id}) stops
between denoising steps (diffusers' step-end callback), frees its slot, and the request sent right
after it is answered in full. Counted in UNet evaluations, not timed: the tiny UNet is slowed by a
hook only so that the cancel lands mid-render."""
from __future__ import annotations

import time

import httpx2 as httpx

from tests.helpers.fake_lmm import FakeLMM
from tests.engine.serve.serve_helpers import running, serve_engine

TEXT = {"text": "a brown dog runs on green grass", "missing": "image", "candidates": 1}


def _wait(pred, what: str, limit: float = 120.0) -> None:
    end = time.time() + limit
    while not pred():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_cancelled_100_step_render_stops_within_a_few_steps(cfg, engine):
    gen = engine.models().generators[0]
    hook = gen.base.unet.register_forward_pre_hook(lambda m, a: time.sleep(0.03))
    try:
        with running(serve_engine(cfg, engine, FakeLMM())) as (url, svc):
            job = httpx.post(f"{url}/v1/jobs", json={**TEXT, "steps": 100, "sample_id": "long:0"}).json()
            start = gen.counters.unet_evals
            _wait(lambda: gen.counters.unet_evals >= start + 4, "the long render to start")
            r = httpx.delete(f"{url}/v1/jobs/{job['id']}")
            at_cancel = gen.counters.unet_evals
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            nxt = httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "next:0"}, timeout=120)
            assert nxt.status_code == 200, nxt.text
            st = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
            assert st["status"] == "cancelled" and st["error"]["error"]["type"] == "cancelled"
            assert svc.active == 0
            spent_after = gen.counters.unet_evals - at_cancel - nxt.json()["counts"]["unet_evals"]
            per_step = 2  # one candidate, classifier-free guidance: 2 UNet rows per step
            assert 0 <= spent_after <= 3 * per_step, spent_after  # stopped within a few steps
            assert at_cancel - start < 80 * per_step  # the base's 80 steps were far from done
            assert nxt.json()["counts"]["unet_evals"] > 0
            # the long one's slot is free: its cancelled render is not waiting anywhere
            assert svc.queue_depths()["render"] == 0
    finally:
        hook.remove()
