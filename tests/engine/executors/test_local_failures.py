"""Any exception in any stage call resolves that call: its rows fail with one clear line and free
their slots, the other rows go on. A call that never returns is failed by the watchdog
(run.stage_timeout_s); a StopIteration raised on a worker thread resolves its future too (it
must not hang the stream). No models."""
from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from kbridge.engine.executors.local import Hooks, stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.types import Sample


class Odd(BaseException):
    """Not an Exception: cannot be caught by ``except Exception``."""


def _rows(n: int) -> list[Row]:
    return [Row(Sample(f"s:{i}", i, "x", None, "image")) for i in range(n)]


def _run(cfg, stages, rows, limit=60.0, hooks=None):
    out: list[Row] = []
    c = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=2, batch_wait_ms=1,
                                                         stage_timeout_s=1.0))
    n = asyncio.run(asyncio.wait_for(stream(rows, stages, Ctx(cfg=c, domain=None, models=Models()), out.append,
                                            hooks=hooks), limit))
    return n, {r.sample_id: r for r in out}


def _bad_on(ids: set[str], exc: BaseException):
    def fn(rows, ctx):
        if any(r.sample_id in ids for r in rows):
            raise exc
        return [r.replace(best="ok") for r in rows]
    return fn


@pytest.mark.parametrize("exc", [StopIteration(), Odd("odd"), KeyError("k"), GeneratorExit(),
                                 ValueError(f"cannot use {object()}\nsecond line")],
                         ids=["StopIteration", "BaseException", "KeyError", "GeneratorExit", "repr"])
def test_any_exception_on_a_worker_thread_fails_only_its_rows(cfg, exc):
    st = Stage("a", _bad_on({"s:1", "s:4"}, exc), "scorer", lambda r, c: True, lambda c: 1)
    n, out = _run(cfg, [st], _rows(6))  # 6 rows through 2 slots: the failed rows released theirs
    assert n == 6 and len(out) == 6
    for i in range(6):
        r = out[f"s:{i}"]
        if i in (1, 4):
            assert r.error is not None and r.error.stage == "a"
            assert r.error.message.startswith(f"internal error in a: {type(exc).__name__}")
            assert "0x" not in r.error.message and "\n" not in r.error.message
        else:
            assert r.error is None and r.best == "ok"


@pytest.mark.parametrize("exc", [StopIteration(), Odd("odd")], ids=["StopIteration", "BaseException"])
def test_an_lmm_call_whose_thread_raises_is_resolved(cfg, exc):
    async def lmm(rows, ctx):
        def body():
            if rows[0].sample_id == "s:0":
                raise exc
            return [r.replace(best="ok") for r in rows]
        return await asyncio.to_thread(body)  # asyncio cannot set a StopIteration on the future

    st = Stage("extract", lmm, "lmm", lambda r, c: True, lambda c: 1)
    n, out = _run(cfg, [st], _rows(4))
    assert n == 4 and out["s:0"].error is not None and out["s:0"].error.stage == "extract"
    assert all(out[f"s:{i}"].best == "ok" for i in (1, 2, 3))


def test_the_watchdog_fails_a_call_that_never_returns(cfg):
    release = threading.Event()
    ran: list[str] = []

    def dense(rows, ctx):
        ran.append(rows[0].sample_id)
        if rows[0].sample_id == "s:2":
            release.wait(30)  # stuck until its call has been failed
        return [r.replace(best="ok") for r in rows]

    async def lmm(rows, ctx):
        if rows[0].sample_id == "s:0":
            try:  # never returns, and ignores the watchdog's cancellation (only the loop's own, at exit)
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(3600)
        return rows

    def on_stage(stage, rows):
        if stage == "render" and rows[0].sample_id == "s:2":
            release.set()  # the device comes back after the watchdog failed the call

    stages = [Stage("extract", lmm, "lmm", lambda r, c: True, lambda c: 1),
              Stage("render", dense, "scorer", lambda r, c: True, lambda c: 1)]
    try:
        n, out = _run(cfg, stages, _rows(5), hooks=Hooks(on_stage=on_stage))
    finally:
        release.set()
    assert n == 5
    for sid, stage in (("s:0", "extract"), ("s:2", "render")):
        assert out[sid].error.stage == stage and "did not return within 1 s" in out[sid].error.message
    # the rows after the stuck render went through a fresh worker thread, one call at a time
    assert all(out[f"s:{i}"].best == "ok" for i in (1, 3, 4))
    assert sorted(ran) == ["s:1", "s:2", "s:3", "s:4"]
