"""The execution core: streaming stages over immutable rows, fused and phased schedules.

Behaviour is checked by order and counts, never by timing thresholds: a slow sample's batch-mates
are written before it; rows in flight never exceed the bound; the source is read lazily; phased
and fused runs agree under the determinism promise; a phased run killed inside a phase resumes
there without redoing finished phases' LMM work.
"""
import asyncio
import dataclasses
import json
import threading
import time

import pytest

from tests.helpers import promise
from tests.helpers.jsonl import read_jsonl
from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.api import Engine
from kbridge.engine.executor import stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.types import Sample


def _engine(cfg, engine, lmm, **run):
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run)))
    loaded = engine.models()
    # the tiny dense models and a fake LMM, also when a phase reloads what the previous one released
    eng.loaders.update(lmm=lambda: lmm, scorer=lambda: loaded.scorer, generators=lambda: loaded.generators)
    return eng


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


def _trivial_stage(name, fn, kind="dense", bs=4):
    return Stage(name, fn, kind, None, lambda r, cfg: True, lambda cfg: bs)


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

    stages = [Stage("render", render, "dense", "generators", lambda r, c: r.missing == "image", lambda c: 1)]
    if scored:
        stages.append(Stage("rank", lambda rows, ctx: [r.replace(best="c0") for r in rows], "dense", "scorer",
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


def test_phased_equals_fused_and_records_the_schedule(cfg, engine, tmp_path):
    fused = _engine(cfg, engine, FakeLMM(), schedule="fused").run(out=tmp_path / "fused")
    lmm = FakeLMM()
    phased = _engine(cfg, engine, lmm, schedule="phased").run(out=tmp_path / "phased")
    assert fused.completed == phased.completed == 8 and not phased.errors
    # same thread count and one sample per dense call: identical results (images via lossless PNGs)
    promise.same_settings(tmp_path / "fused", tmp_path / "phased")
    man = json.loads((tmp_path / "phased" / "manifest.json").read_text())
    assert man["schedule"] == "phased" and man["phases"][1] == ["render"]
    assert not (tmp_path / "phased" / "phases").exists()  # persisted rows go when the run ends
    turns = {r.sample_id: [] for r in lmm.requests}
    for r in lmm.requests:  # phased: every extract/write answer came before any candidate analysis
        turns[r.sample_id].append(r.stage)
    order = [r.stage for r in lmm.requests]
    assert max(i for i, s in enumerate(order) if s in ("extract", "generate")) < order.index("rank")


@pytest.mark.parametrize("after", [0, 2], ids=["at-the-phase-boundary", "mid-phase"])
def test_a_phased_run_killed_inside_a_phase_resumes_there(cfg, engine, tmp_path, monkeypatch, after):
    from kbridge.engine import phased

    out = tmp_path / "o"
    real = phased.PhaseFiles.persist
    seen = {"n": 0}

    def dies_in_phase_1(self, k, row, store):  # render's output: the run stops after `after` rows
        if k == 1:
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(28, "No space left on device")
        real(self, k, row, store)

    monkeypatch.setattr(phased.PhaseFiles, "persist", dies_in_phase_1)
    first_lmm = FakeLMM()
    with pytest.raises(OSError, match="No space left"):
        _engine(cfg, engine, first_lmm, schedule="phased").run(out=out)
    assert len(read_jsonl(out / "phases" / "0.jsonl")) == 8
    assert len(read_jsonl(out / "phases" / "1.jsonl")) == after if after else not (out / "phases" / "1.jsonl").exists()
    monkeypatch.setattr(phased.PhaseFiles, "persist", real)
    second_lmm = FakeLMM()
    rep = _engine(cfg, engine, second_lmm, schedule="phased").run(out=out)
    rows = read_jsonl(out / "results.jsonl")
    assert rep.completed == 8 and len(rows) == len({r["sample_id"] for r in rows}) == 8
    # phase 0 (extract + write) was complete: the re-run asked the LMM only for candidate analysis
    assert {r.stage for r in second_lmm.requests} == {"rank"}
    # and rendered only what phase 1 had not persisted
    assert all(c["image"].startswith("images/") for r in rows for c in r["candidates"] if "image" in c)
    promise.same_settings(out, _fused_reference(cfg, engine, tmp_path))


def _fused_reference(cfg, engine, tmp_path):
    ref = tmp_path / "ref"
    _engine(cfg, engine, FakeLMM(), schedule="fused").run(out=ref)
    return ref
