"""kbridge's in-process vLLM backend (``AsyncLLM`` on vLLM's CPU platform): the demo set at both
fidelities, agreement with the HTTP path, engine figures per request, per-request error isolation,
per-row dispatch under continuous batching, and ``kbridge serve`` on top of it."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.helpers import promise
from kbridge.engine.lmm import LMMClient, Request, RequestLog
from tests.helpers.jsonl import read_jsonl
from tests.vllm.vllm_helpers import engine_on

pytestmark = pytest.mark.vllm


def _complete(out, rep):
    assert rep.completed == 8 and not rep.errors, rep.errors
    return read_jsonl(out / "results.jsonl")


def test_demo_set_in_process_fast_agrees_with_http(inproc_fast, http_fast):
    out, rep = inproc_fast
    rows = _complete(out, rep)
    assert rep.lmm["prefix_cached_tokens"] > 0
    for r in rows:  # vLLM's own account of every fresh request: where its time went
        e = r["lmm_engine"]
        assert len(e["requests"]) == r["counts"]["lmm_calls"]
        for q in e["requests"]:
            assert q["queue_s"] >= 0 and q["prefill_s"] > 0 and q["decode_s"] >= 0
    # the same twin, prompts and seeds through the server: the cross-setting rule
    ties = promise.cross_settings(http_fast[0], out)
    assert len(ties) <= 1, ties


def test_demo_set_in_process_reference_fidelity(vcfg, engine, vllm_backend, tmp_path):
    cfg = dataclasses.replace(vcfg, run=dataclasses.replace(vcfg.run, fidelity="reference"))
    rep = engine_on(cfg, engine, vllm_backend).run(out=tmp_path / "ref")
    rows = _complete(tmp_path / "ref", rep)
    assert max(r["counts"]["lmm_serial_turns"] for r in rows) >= 3


def _req(sid: str, content: list, schema: dict, tokens: int = 64) -> Request:
    return Request([{"role": "user", "content": content}], schema, 1234, tokens, 0.1, sid, "probe", 1)


SHORT = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}}, "required": ["a"]}


def test_one_bad_request_fails_only_its_own_sample_with_vllms_message(vllm_backend):
    from PIL import Image

    img = Image.new("RGB", (64, 48), (30, 120, 200))
    good = [{"type": "image", "image": img}, {"type": "text", "text": "a photo of a cat"}]
    bad = [{"type": "image", "image": img}] * 3 + [{"type": "text", "text": "three images"}]  # limit: 2
    log = RequestLog()
    client = LMMClient(vllm_backend, log)
    out = asyncio.run(client.complete([_req("ok:0", good, SHORT), _req("bad", bad, SHORT), _req("ok:1", good, SHORT)]))
    assert out[1].error is not None and "At most 2 image(s)" in out[1].error, out[1].error
    assert out[0].error is None and out[2].error is None
    assert out[0].parsed is not None and out[2].parsed is not None
    assert sorted(r["sample_id"] for r in log.records) == ["ok:0", "ok:1"]


def test_a_long_answer_does_not_hold_up_the_other_rows(vcfg, vllm_backend):
    """Four rows reach one LMM stage together; one asks for a 1200-character answer. Each row's
    request goes to the engine on its own, so the short rows are written while the long one is
    still decoding (order and timestamps, no thresholds)."""
    import time

    from kbridge.engine.executors.local import stream
    from kbridge.engine.models import Models
    from kbridge.engine.rows import Row
    from kbridge.engine.stages import Ctx, Stage
    from kbridge.engine.domains.lmm import lmm_call
    from kbridge.engine.types import Sample

    long = {"type": "object", "properties": {"a": {"type": "string", "minLength": 1200, "maxLength": 1200}},
            "required": ["a"]}

    async def ask(rows, ctx):
        reqs = [_req(r.sample_id, [{"type": "text", "text": f"describe sample {r.sample_id}"}],
                     long if r.sample_id == "t:0" else SHORT, 2000) for r in rows]
        _, recs = await lmm_call(ctx, lambda c: c.complete(reqs))
        return [r.with_lmm(recs[r.sample_id]).replace(best="c0") for r in rows]

    written: list[tuple[str, float]] = []
    cfg = dataclasses.replace(vcfg, run=dataclasses.replace(vcfg.run, batch_size=4, rows_in_flight=4,
                                                            batch_wait_ms=200))
    ctx = Ctx(cfg=cfg, domain=None, models=Models(lmm=vllm_backend),
              client=LMMClient(vllm_backend, RequestLog()))
    stage = Stage("ask", ask, "lmm", lambda r, c: True, lambda c: 4)
    rows = [Row(Sample(f"t:{i}", i, "x", None, "image")) for i in range(4)]
    sink_rows: dict[str, Row] = {}

    def sink(row):
        written.append((row.sample_id, time.time()))
        sink_rows[row.sample_id] = row

    assert asyncio.run(stream(iter(rows), [stage], ctx, sink)) == 4
    order = [s for s, _ in written]
    assert order[-1] == "t:0", order
    slow = sink_rows["t:0"].lmm[0]
    assert slow.generated_tokens > 4 * max(sink_rows[s].lmm[0].generated_tokens for s in order[:-1])
    # each short row was written before the long answer came back: it did not wait for it
    assert all(t < slow.end for s, t in written if s != "t:0"), (written, slow.end)


def test_kbridge_serve_on_the_in_process_engine_agrees_with_kbridge_run(vcfg, engine, vllm_backend, inproc_fast,
                                                                        tmp_path):
    import httpx2 as httpx
    from concurrent.futures import ThreadPoolExecutor

    from kbridge.engine import data as D
    from tests.engine.serve.serve_helpers import running, serve_engine
    from tests.engine.serve.test_serve_agreement import _as_run_dir, _request

    run_dir, _ = inproc_fast
    ran = [r for r in read_jsonl(run_dir / "results.jsonl")]
    four = sorted(ran, key=lambda r: r["index"])[:4]
    ds = D.open_dataset(None)
    bodies = [_request(ds, r["index"], r["missing"]) for r in four]
    eng = serve_engine(vcfg, engine, vllm_backend, run={"dense_rows": 4})
    with running(eng) as (url, svc):
        with httpx.Client(timeout=600) as client, ThreadPoolExecutor(4) as pool:
            resps = list(pool.map(lambda b: client.post(f"{url}/v1/complete", json=b), bodies))
    assert [r.status_code for r in resps] == [200] * 4, [r.text[:200] for r in resps]
    served = [r.json() for r in resps]
    ties = promise.cross_settings(run_dir, _as_run_dir(served, tmp_path / "served"),
                                  only={r["sample_id"] for r in four})
    assert len(ties) <= 1, ties


def test_zz_engine_death_is_one_clear_line_per_sample(vcfg, engine, vllm_backend, tmp_path):
    """Last here (it kills the session's engine): the engine core process dies, as in an OOM kill
    or a CPU-kernel crash; every request then fails with one clear message, a run records one
    error line per sample and returns (nothing raised, nothing written half)."""
    import os
    import time

    import psutil

    # this process's own engine core (a direct child; the session's server is a tree of its own)
    cores = [p for p in psutil.Process(os.getpid()).children() if "EngineCore" in p.name() + " ".join(p.cmdline())]
    assert len(cores) == 1, [p.name() for p in psutil.Process(os.getpid()).children()]
    for p in cores:
        p.kill()
    deadline = time.monotonic() + 60
    client = LMMClient(vllm_backend, RequestLog())
    text = [{"type": "text", "text": "a cat"}]
    while True:  # the engine's monitor notices the death within moments
        out = asyncio.run(client.complete([_req("a", text, SHORT), _req("b", text, SHORT)]))
        if out[0].error or time.monotonic() > deadline:
            break
    assert all(o.error and "the engine died" in o.error for o in out), [o.error for o in out]
    assert vllm_backend.dead and "the engine died" in vllm_backend.dead
    # a run on the dead engine starts no sample: it stops with the reason, nothing written, nothing lost
    rep = engine_on(vcfg, engine, vllm_backend).run(out=tmp_path / "dead", limit=2)
    assert rep.completed == 0 and not rep.errors and "the engine died" in rep.stopped
    assert not (tmp_path / "dead" / "results.jsonl").exists() or not read_jsonl(tmp_path / "dead" / "results.jsonl")
    # kbridge serve on the dead engine: /health 503 with the reason, a request a clear 503
    import httpx2 as httpx

    from kbridge.engine import data as D
    from tests.engine.serve.serve_helpers import running, serve_engine
    from tests.engine.serve.test_serve_agreement import _request

    with running(serve_engine(vcfg, engine, vllm_backend), ready=False) as (url, svc):
        deadline = time.monotonic() + 120
        while "engine died" not in (svc.unready() or "") and time.monotonic() < deadline:
            time.sleep(0.1)  # the models load first
        h = httpx.get(f"{url}/health", timeout=10)
        assert h.status_code == 503 and "the LMM engine died" in h.json()["reason"], h.text
        r = httpx.post(f"{url}/v1/complete", json=_request(D.open_dataset(None), 0, "image"), timeout=60)
        assert r.status_code == 503 and "the LMM engine died" in r.json()["error"]["message"], r.text
