"""The local executor: streaming stages over immutable rows (the fused schedule).

Behaviour is checked by order and counts, never by timing thresholds: a slow sample's batch-mates
are written before it; rows in flight never exceed the bound; the source is read lazily; an
exception fails only its call; render workers pull from one queue. The phased schedule:
test_phased.py.
"""
import asyncio
import dataclasses
import threading
import time

import pytest

from tests.helpers.jsonl import read_jsonl
from tests.helpers.engines import engine_with
from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.executors.local import stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.types import Sample


def _engine(cfg, engine, lmm, **run):
    return engine_with(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run)), engine, lmm)


def test_a_slow_sample_does_not_hold_up_the_others(cfg, engine, tmp_path):
    slow = "demo:0"  # the first image-missing sample: every one of its LMM answers takes 1.5 s
    eng = _engine(cfg, engine, FakeLMM(slow={slow}, delay=1.5), rows_in_flight=8)
    rep = eng.run(out=tmp_path / "o")
    assert rep.completed == 8 and not rep.errors
    rows = read_jsonl(tmp_path / "o" / "results.jsonl")
    order = [r["sample_id"] for r in rows]
    assert order[-1] == slow, order  # written last although admitted first
    ends = {r["sample_id"]: r["timings"]["sample"]["end"] for r in rows}
    # every other sample finished before the slow one's second LMM turn could even have answered
    assert all(ends[s] < ends[slow] for s in ends if s != slow)
    t = rows[-1]["timings"]
    assert set(t) >= {"load", "extract", "write", "render", "candidate_knowledge", "rank", "sample"}
    assert t["extract"]["end"] <= t["write"]["start"] <= t["write"]["end"] <= t["render"]["start"]


def _trivial_stage(name, fn, slot="scorer", bs=4):
    return Stage(name, fn, slot, lambda r, cfg: True, lambda cfg: bs)


def test_rows_in_flight_are_bounded_and_the_source_is_read_lazily(cfg):
    limit = 3
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=limit, batch_wait_ms=1))
    state = {"produced": 0, "written": 0, "max_open": 0, "batches": []}
    lock = threading.Lock()

    def source():
        for i in range(20):
            state["produced"] += 1
            with lock:
                state["max_open"] = max(state["max_open"], state["produced"] - state["written"])
            yield Row(Sample(f"t:{i}", i, "x", None, "image"))

    def work(rows, ctx):
        state["batches"].append(len(rows))
        time.sleep(0.01)
        return [r.replace(best="c0") for r in rows]

    def sink(row):
        with lock:
            state["written"] += 1

    ctx = Ctx(cfg=run_cfg, domain=None, models=Models())
    n = asyncio.run(stream(source(), [_trivial_stage("work", work)], ctx, sink))
    assert n == 20 and state["written"] == 20
    assert state["max_open"] <= limit + 1  # the row being produced counts before its slot is taken
    assert max(state["batches"]) <= 4 and sum(state["batches"]) == 20


def test_an_exception_inside_a_stage_fails_only_that_call(cfg):
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dense_rows=1))
    done = []

    def flaky(rows, ctx):
        if rows[0].sample.index == 2:
            raise RuntimeError("boom")
        return rows

    ctx = Ctx(cfg=run_cfg, domain=None, models=Models())
    src = (Row(Sample(f"t:{i}", i, "x", None, "image")) for i in range(5))
    asyncio.run(stream(src, [_trivial_stage("flaky", flaky, bs=1)], ctx, done.append))
    failed = [r for r in done if r.error]
    assert [r.sample.index for r in failed] == [2] and "internal error in flaky: RuntimeError: boom" in \
        failed[0].error.message and "Traceback" in failed[0].error.detail
    assert len(done) == 5


@pytest.mark.parametrize("scored", [False, True], ids=["skipped", "scored-beside-render"])
def test_a_row_never_waits_behind_another_rows_render(cfg, scored):
    """A text-missing row reaching render while an image-missing row is being rendered goes on at
    once (head-of-line blocking would hold it until that call returned); with a scoring stage
    after render on the same device, the text row is scored on the scorer's own worker while the
    render call still runs. Either way it is written before the render call ends."""
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dense_rows=1, batch_wait_ms=0))
    rendering, release = threading.Event(), threading.Event()
    written: list[Row] = []

    def render(rows, ctx):
        rendering.set()
        assert release.wait(30), "the text row was never written while render was busy"
        return rows

    def sink(row):
        written.append(row)
        if row.sample_id == "text:1":
            release.set()  # only once the text row is out may the render call finish

    stages = [Stage("render", render, "generators", lambda r, c: r.missing == "image", lambda c: 1)]
    if scored:
        stages.append(Stage("rank", lambda rows, ctx: [r.replace(best="c0") for r in rows], "scorer",
                            lambda r, c: True, lambda c: 1))

    async def main():
        q: asyncio.Queue = asyncio.Queue()

        async def source():
            while (r := await q.get()) is not None:
                yield r

        task = asyncio.ensure_future(stream(source(), stages, Ctx(cfg=run_cfg, domain=None, models=Models()), sink))
        q.put_nowait(Row(Sample("image:0", 0, "x", None, "image")))
        while not rendering.is_set():
            await asyncio.sleep(0.005)
        q.put_nowait(Row(Sample("text:1", 1, None, None, "text")))
        q.put_nowait(None)
        return await asyncio.wait_for(task, 60)

    assert asyncio.run(main()) == 2
    assert [r.sample_id for r in written] == ["text:1", "image:0"]
    assert [r.error for r in written] == [None, None]  # the render call was released, not timed out


def test_render_workers_pull_from_one_queue(cfg):
    """Data-parallel diffusion: every generator replica gets rows from the same queue."""
    from kbridge.engine.stages import STAGES

    class Gen:
        def __init__(self, name):
            self.name, self.rows = name, 0
            self.cfg = type("C", (), {"device": name})()
            self.counters = type("K", (), {"unet_evals": 0, "vae_decodes": 0})()

        def render(self, prompts, seeds):
            self.rows += 1
            time.sleep(0.02)
            return [f"{self.name}-img"] * len(prompts)

    from kbridge.engine.types import Candidate

    g1, g2 = Gen("dev-a"), Gen("dev-b")
    ctx = Ctx(cfg=cfg, domain=None, models=Models(generators=[g1, g2]))
    src = (Row(Sample(f"t:{i}", i, "x", None, "image"), candidates=(Candidate("c0", "generated", prompt="p", seed=1),))
           for i in range(12))
    out = []
    asyncio.run(stream(src, [STAGES["render"]], ctx, out.append))
    assert len(out) == 12 and g1.rows > 0 and g2.rows > 0 and g1.rows + g2.rows == 12
    assert {r.candidates[0].image for r in out} == {"dev-a-img", "dev-b-img"}
