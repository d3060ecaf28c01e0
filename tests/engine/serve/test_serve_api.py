"""kbridge serve over loopback with the tiny dense models and a FakeLMM: status codes, SSE order,
admission, cancellation, overrides, failure isolation, metrics. No timing thresholds: slow
requests are made slow by the fake LMM (seconds) and checked by order and counts."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest
from PIL import Image

from tests.helpers.fake_lmm import FakeLMM
from tests.engine.serve.serve_helpers import running, serve_engine

TEXT = {"text": "a brown dog runs on green grass", "missing": "image"}


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _wait(pred, what: str, limit: float = 60.0) -> None:
    end = time.time() + limit
    while not pred():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _sse(text: str) -> list[tuple[int, str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        f = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((int(f["id"]), f["event"], json.loads(f["data"])))
    return out


def test_health_says_503_until_the_models_are_loaded(cfg, engine):
    gate = threading.Event()
    eng = serve_engine(cfg, engine, FakeLMM())
    load = eng.loaders["lmm"]
    eng.loaders["lmm"] = lambda c: gate.wait(60) and load(c)
    with running(eng, ready=False) as (url, svc):
        assert httpx.get(f"{url}/health").status_code == 503
        r = httpx.post(f"{url}/v1/complete", json=TEXT)
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        gate.set()
        _wait(lambda: httpx.get(f"{url}/health").status_code == 200, "/health to say 200")
        assert httpx.post(f"{url}/v1/complete", json=TEXT, timeout=120).status_code == 200


def test_status_codes_auth_and_limits(cfg, engine):
    with running(serve_engine(cfg, engine, FakeLMM(), max_image_pixels=64 * 64), api_key="s3cret") as (url, svc):
        key = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/health").status_code == 200  # open without the key
        assert httpx.get(f"{url}/metrics").status_code == 200
        r = httpx.post(f"{url}/v1/complete", json=TEXT)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{url}/v1/complete", json=TEXT, headers={"Authorization": "Bearer s3creT"}).status_code == 401
        assert httpx.get(f"{url}/v1/jobs/nope").status_code == 401
        # 400 malformed JSON or unusable fields, 422 schema (unknown fields refused), 413 limits, 404
        post = lambda **kw: httpx.post(f"{url}/v1/complete", timeout=120, **{"headers": key, **kw})  # noqa: E731
        assert post(content=b'{"text": "x", "missing": ',
                    headers={**key, "content-type": "application/json"}).status_code == 400
        assert post(json={"missing": "image"}).status_code == 400
        assert post(json={"missing": "text", "image": "***"}).status_code == 400
        r = post(json={**TEXT, "colour": "red"})
        assert r.status_code == 422 and "colour" in r.json()["error"]["message"]
        assert post(json={**TEXT, "candidates": "many"}).status_code == 422
        assert post(json={**TEXT, "candidates": cfg.serve.max_candidates + 1}).status_code == 422
        assert post(json={**TEXT, "missing": "audio"}).status_code == 422
        r = post(json={"text": "x" * (30 * 1024 * 1024), "missing": "image"})  # valid JSON, 30 MB text field
        assert r.status_code == 413 and "body" in r.json()["error"]["message"]
        big = base64.b64encode(_png(65, 64)).decode()
        r = post(json={"image": big, "missing": "text"})
        assert r.status_code == 413 and "65x64" in r.json()["error"]["message"]
        r = post(files={"image": ("x.png", _png(80, 80), "image/png")}, data={"missing": "text"})
        assert r.status_code == 413
        assert httpx.get(f"{url}/v1/jobs/0123", headers=key).status_code == 404
        assert httpx.get(f"{url}/v1/files/0123/c0.png", headers=key).status_code == 404
        # a multipart upload of a small image works
        r = post(files={"image": ("x.png", _png(32, 32), "image/png")}, data={"missing": "text", "candidates": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["missing"] == "text" and len(body["candidates"]) <= 2 and body["best"]
        assert all("text" in c for c in body["candidates"])
        docs = httpx.get(f"{url}/openapi.json").json()
        assert "/v1/complete" in docs["paths"] and "/v1/jobs/{job_id}/events" in docs["paths"]


def test_sse_events_arrive_in_stage_order_and_match_the_job(cfg, engine):
    with running(serve_engine(cfg, engine, FakeLMM())) as (url, svc):
        r = httpx.post(f"{url}/v1/jobs", json={**TEXT, "images": "url"})
        assert r.status_code == 202
        job = r.json()
        with httpx.stream("GET", f"{url}{job['events']}", timeout=120) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = _sse(s.read().decode())
        ids = [i for i, _, _ in events]
        names = [n for _, n, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        n = cfg.generation.candidates
        assert names == ["knowledge", "prompts"] + ["candidate"] * n + ["candidate_knowledge", "scores", "result"], names
        prompts = events[1][2]["prompts"]
        assert [e[2]["prompt"] for e in events if e[1] == "candidate"] == prompts
        result = events[-1][2]
        assert result["best"] == events[-2][2]["best"]
        st = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert st["status"] == "done" and st["result"]["best"] == result["best"]
        assert st["stages"] == ["extract", "write", "render", "candidate_knowledge", "retrieve", "rank"]
        # images as URLs under /v1/files/, PNGs of the profile's size
        img = httpx.get(url + result["candidates"][0]["image"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(img.content)).size == (cfg.generation.width, cfg.generation.height)


def test_queue_full_gives_429_with_retry_after(cfg, engine):
    slow = {f"slow:{i}" for i in range(4)}
    with running(serve_engine(cfg, engine, FakeLMM(slow=slow, delay=1.0), max_queue=1)) as (url, svc):
        def go(i):
            return httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": f"slow:{i}"}, timeout=120)

        with ThreadPoolExecutor(4) as pool:
            resps = list(pool.map(go, range(4)))
        codes = sorted(r.status_code for r in resps)
        assert codes == [200, 429, 429, 429], codes
        for r in resps:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
        assert svc.active == 0
        assert httpx.post(f"{url}/v1/complete", json=TEXT, timeout=120).status_code == 200  # slot free again


def test_a_cancelled_client_frees_its_slot(cfg, engine):
    lmm = FakeLMM(slow={"slow:0"}, delay=1.5)
    with running(serve_engine(cfg, engine, lmm, max_queue=1)) as (url, svc):
        with pytest.raises(httpx.TimeoutException):  # the client gives up while extraction runs
            httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "slow:0"}, timeout=0.5)
        job = next(iter(svc.jobs.values()))
        _wait(lambda: job.row is not None, "the cancelled row to leave the pipeline")
        assert job.status == "cancelled" and svc.active == 0
        assert [s for s, _ in job.events] == []  # its extraction in flight was aborted
        assert not any(r.stage == "generate" and r.sample_id == "slow:0" for r in lmm.requests)
        assert httpx.post(f"{url}/v1/complete", json=TEXT, timeout=120).status_code == 200
        assert 'kbridge_requests_total{status="cancelled"} 1.0' in httpx.get(f"{url}/metrics").text


class _Failing(FakeLMM):
    async def generate(self, requests):
        if any(r.sample_id == "bad:0" for r in requests):
            raise RuntimeError("the LMM fell over")
        return await super().generate(requests)


def test_one_requests_failure_is_its_own(cfg, engine):
    with running(serve_engine(cfg, engine, _Failing())) as (url, svc):
        with ThreadPoolExecutor(3) as pool:
            bad, *good = pool.map(lambda sid: httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": sid},
                                                         timeout=120), ["bad:0", "ok:1", "ok:2"])
        assert bad.status_code == 500 and bad.json()["error"]["sample_id"] == "bad:0" and bad.json()["error"]["stage"] == "extract"
        assert [r.status_code for r in good] == [200, 200]
        assert httpx.get(f"{url}/health").status_code == 200


def test_overrides_and_cross_request_batches(cfg, engine):
    lmm = FakeLMM()
    eng = serve_engine(cfg, engine, lmm, run={"dense_rows": 4, "batch_wait_ms": 250})
    with running(eng) as (url, svc):
        base = httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "o:1"}, timeout=120).json()
        r = httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "o:1", "candidates": 2, "steps": 2,
                                                   "seed": 7}, timeout=120).json()
        assert len(base["candidates"]) == cfg.generation.candidates and len(r["candidates"]) == 2
        per_step = base["counts"]["unet_evals"] / cfg.generation.candidates / cfg.generation.steps
        assert r["counts"]["unet_evals"] == pytest.approx(per_step * 2 * 2)  # 2 candidates × 2 steps
        assert r["candidates"][0]["seed"] != base["candidates"][0]["seed"]  # another root seed
        r2 = httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "o:1", "candidates": 2}, timeout=120).json()
        assert [c["seed"] for c in r2["candidates"]] == [c["seed"] for c in base["candidates"][:2]]
        # four concurrent image-missing requests: render and rank take them in shared calls
        with ThreadPoolExecutor(4) as pool:
            resps = list(pool.map(lambda i: httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": f"b:{i}"},
                                                       timeout=120), range(4)))
        assert [x.status_code for x in resps] == [200] * 4
        metrics = httpx.get(f"{url}/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    fam = {f.name: f for f in text_string_to_metric_families(metrics)}
    render_rows = {s.labels["le"]: s.value for s in fam["kbridge_batch_rows"].samples
                   if s.name.endswith("_bucket") and s.labels["stage"] == "render"}
    calls = render_rows["+Inf"]
    assert calls < 7 and render_rows["1.0"] < calls  # 7 requests, fewer render calls; some took several rows


def test_metrics_parse_and_count_what_the_responses_say(cfg, engine):
    from prometheus_client.parser import text_string_to_metric_families

    with running(serve_engine(cfg, engine, FakeLMM())) as (url, svc):
        img = httpx.post(f"{url}/v1/complete", json=TEXT, timeout=120).json()
        txt = httpx.post(f"{url}/v1/complete", files={"image": ("x.png", _png(32, 32), "image/png")},
                         data={"missing": "text"}, timeout=120).json()
        httpx.post(f"{url}/v1/complete", json={"missing": "image"})
        fams = list(text_string_to_metric_families(httpx.get(f"{url}/metrics").text))
    assert fams and all(f.name.startswith("kbridge_") for f in fams)
    val = {}
    for f in fams:
        for s in f.samples:
            val[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert val[("kbridge_requests_total", (("status", "done"),))] == 2
    assert val[("kbridge_http_responses_total", (("code", "400"), ("route", "/v1/complete")))] == 1
    for kind in ("image", "text"):
        assert val[("kbridge_request_latency_seconds_count", (("missing", kind),))] == 1
        assert val[("kbridge_stage_latency_seconds_count", (("missing", kind), ("stage", "extract")))] == 1
    assert ("kbridge_stage_latency_seconds_count", (("missing", "text"), ("stage", "render"))) not in val
    c = [img["counts"], txt["counts"]]
    assert val[("kbridge_unet_evals_total", ())] == pytest.approx(sum(x["unet_evals"] for x in c))
    assert val[("kbridge_lmm_tokens_total", (("kind", "generated"),))] == sum(x["generated_tokens"] for x in c)
    assert val[("kbridge_lmm_sequences_total", ())] == sum(x["lmm_calls"] for x in c)
    for stage in ("admission", "extract", "render", "rank"):
        assert val[("kbridge_queue_depth", (("stage", stage),))] == 0
    assert val[("kbridge_ready", ())] == 1
