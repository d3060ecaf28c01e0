"""The LMM engine dies mid-run (a backend that reports ``dead``, as the HTTP backend does when its
server is gone and the in-process vLLM backend when its engine core died): no row is admitted
after the death is seen, each row in flight fails with its own line, the stream raises
``LMMEngineDied``, a run reports ``stopped`` with what it wrote intact, and a re-run with a live
engine completes every sample exactly once. The same with the real engine: tests/vllm."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kbridge.engine.errors import LMMEngineDied
from kbridge.engine.executors.local import stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.types import Sample
from tests.helpers import promise
from tests.helpers.engines import engine_with
from tests.helpers.fake_lmm import DyingLMM, FakeLMM
from tests.helpers.jsonl import read_jsonl


def test_no_row_is_admitted_after_the_engine_died(cfg):
    lmm = DyingLMM(die_after=3)
    admitted: list[str] = []

    async def ask(rows, ctx):
        resp = await ctx.client.complete([_req(r.sample_id) for r in rows])
        return [r.fail("ask", e.error) if e.error else r.replace(best="c0") for r, e in zip(rows, resp)]

    def source():
        for i in range(10):
            admitted.append(f"s:{i}")  # read lazily: a row is taken only when a slot is free
            yield Row(Sample(f"s:{i}", i, "x", None, "image"))

    from kbridge.engine.lmm import LMMClient, RequestLog

    c = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=2, batch_wait_ms=1))
    ctx = Ctx(cfg=c, domain=None, models=Models(lmm=lmm), client=LMMClient(lmm, RequestLog()))
    stage = Stage("ask", ask, "lmm", lambda r, cf: True, lambda cf: 1)
    out: list[Row] = []
    with pytest.raises(LMMEngineDied) as e:
        asyncio.run(asyncio.wait_for(stream(source(), [stage], ctx, out.append), 30))
    assert "is gone" in e.value.reason
    done = [r.sample_id for r in out if r.error is None]
    failed = [r for r in out if r.error is not None]
    assert done == ["s:0", "s:1", "s:2"]  # the answers before the death were kept
    # the rows in flight when the death was seen (at most rows_in_flight) each failed with one line
    assert 1 <= len(failed) <= 2 and len({r.sample_id for r in failed}) == len(failed)
    assert all(r.error.stage == "ask" and "is gone" in r.error.message for r in failed)
    assert e.value.admitted == len(out) == 3 + len(failed)
    assert sorted(lmm.refused) == sorted(r.sample_id for r in failed)  # no request of a row admitted after
    # the source was read once more at most (the row that found the engine dead), never drained
    assert len(admitted) <= e.value.admitted + 1 < 10


def _req(sid):
    from kbridge.engine.lmm import Request

    return Request([{"role": "user", "content": [{"type": "text", "text": sid}]}], None, 1, 8, 0.1, sid, "ask", 1)


def test_a_run_stops_admitting_when_the_engine_dies_and_a_rerun_completes_it(cfg, engine, tmp_path):
    out = tmp_path / "run"
    run = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=2))
    dying = DyingLMM(die_after=12)
    rep = engine_with(run, engine, dying).run(out=out)
    assert rep.stopped and "is gone" in rep.stopped
    errors = read_jsonl(out / "errors.jsonl")
    written = {r["sample_id"] for r in read_jsonl(out / "results.jsonl")} if (out / "results.jsonl").exists() else set()
    assert len(errors) == len(rep.errors) <= 2  # only the rows in flight: one line each
    assert all("LMM server" in e["error"] for e in errors)
    assert rep.completed == len(written) and rep.completed + len(errors) < 8  # the rest were never started
    # the only requests after the death are those of the rows in flight then (a failed row makes no more)
    assert set(dying.refused) == {e["sample_id"] for e in errors}, (dying.refused, errors)

    again = engine_with(run, engine, FakeLMM()).run(out=out)
    assert again.stopped is None and not again.errors
    rows = promise.rows(out)  # fails if a sample was written twice
    assert len(rows) == 8 and again.completed == 8 - rep.completed
