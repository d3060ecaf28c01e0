"""``stages.run_stage``, the one stage call of every executor: rows a stage does not apply to pass
untouched, the others go in micro-batches of one configuration and distinct sample ids (one call
per row for a continuously batching LMM), a failing call fails only its own rows with the
traceback kept, every row is timed and the trace hook sees each call."""
from __future__ import annotations

import asyncio
import dataclasses
import types

from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage, run_stage
from kbridge.engine.types import Sample


def _rows(n: int) -> list[Row]:
    return [Row(Sample(f"s:{i}", i, "x", None, "image")) for i in range(n)]


def _recorder(calls: list, fail_on: str | None = None, lmm: bool = False):
    def body(rows, ctx):
        calls.append(([r.sample_id for r in rows], ctx.cfg))
        if fail_on in {r.sample_id for r in rows}:
            raise ValueError("boom at 0x7f00deadbeef")
        return [r.replace(best=f"b{ctx.cfg.run.seed}") for r in rows]

    async def async_body(rows, ctx):
        await asyncio.sleep(0)
        return body(rows, ctx)
    return async_body if lmm else body


def test_pass_through_micro_batches_and_configurations(cfg):
    calls: list = []
    st = Stage("rank", _recorder(calls), "scorer", lambda r, c: r.sample.index != 1, lambda c: 2)
    other = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=7))
    rows = _rows(6)
    rows[2] = rows[2].fail("load", "bad file")
    rows[4] = rows[4].replace(cfg=other)
    rows.append(Row(Sample("s:0", 0, "x", None, "image")))  # a second request with the same sample id
    delivered: list = []
    out = asyncio.run(run_stage(st, rows, Ctx(cfg=cfg, domain=None, models=Models()),
                                deliver=lambda rs, called: delivered.append(([r.sample_id for r in rs], called))))
    assert [r.sample_id for r in out] == [r.sample_id for r in rows]  # input order
    assert out[1] is rows[1] and out[2] is rows[2]  # not for this stage / failed: untouched, never called
    assert (["s:1"], False) in delivered and (["s:2"], False) in delivered
    assert [ids for ids, _ in calls] == [["s:0", "s:3"], ["s:5", "s:0"], ["s:4"]]  # batches of 2, s:0 apart
    assert [c.run.seed for _, c in calls] == [cfg.run.seed, cfg.run.seed, 7]  # a call sees one configuration
    assert out[4].best == "b7" and out[0].best == f"b{cfg.run.seed}"
    assert all(r.timings and r.timings[-1][0] == "rank" for i, r in enumerate(out) if i not in (1, 2))
    assert sum(called for _, called in delivered) == 3


def test_a_failing_call_fails_only_its_rows_with_the_traceback(cfg):
    calls: list = []
    st = Stage("render", _recorder(calls, fail_on="s:2"), "generators", lambda r, c: True, lambda c: 2)
    seen: list = []
    trace = types.SimpleNamespace(call=lambda stage, worker, a, b, t0, t1: seen.append((stage, worker, len(a))) or b)
    out = asyncio.run(run_stage(st, _rows(4), Ctx(cfg=cfg, domain=None, models=Models(), trace=trace), "gpu-0"))
    assert [r.error is None for r in out] == [True, True, False, False]
    e = out[2].error
    assert e.stage == "render" and e.message == "internal error in render: ValueError: boom"  # no address
    assert "Traceback" in e.detail and "boom" in e.detail
    assert out[3].error == e and out[2].timings[-1][0] == "render"
    assert seen == [("render", "gpu-0", 2), ("render", "gpu-0", 2)]


def test_a_continuously_batching_backend_gets_one_call_per_row(cfg):
    for continuous, expected in ((True, [["s:0"], ["s:1"], ["s:2"]]), (False, [["s:0", "s:1", "s:2"]])):
        calls: list = []
        st = Stage("extract", _recorder(calls, lmm=True), "lmm", lambda r, c: True, lambda c: 4)
        lmm = types.SimpleNamespace(continuous_batching=continuous)
        out = asyncio.run(run_stage(st, _rows(3), Ctx(cfg=cfg, domain=None, models=Models(lmm=lmm))))
        assert sorted(ids for ids, _ in calls) == expected and all(r.best for r in out)
