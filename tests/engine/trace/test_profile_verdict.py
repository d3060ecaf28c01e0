"""``kbridge profile``'s verdict follows the bottleneck: with one stage made slow on purpose (a
fake delay in a trivial stage graph, no models) it names that stage and its knob; with another
stage slow it names the other one. Checked by name, never by a timing threshold."""
import asyncio
import dataclasses
import time

import pytest

from kbridge.engine.executors.local import stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.trace import TraceOptions, Tracer
from kbridge.engine.trace.check import problems
from kbridge.engine.trace.io import read_events
from kbridge.engine.trace.profile import KNOBS, analyse, load
from kbridge.engine.types import Sample


def _run(cfg, path, slow: str) -> dict:
    def stage(name, slot=None):
        def fn(rows, ctx):
            time.sleep(0.03 if name == slow else 0.001)
            return rows
        return Stage(name, fn, slot, lambda r, c: True, lambda c: 1)

    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=4, batch_wait_ms=1))
    tr = Tracer(TraceOptions(path, counters_s=0.01))
    ctx = Ctx(cfg=run_cfg, domain=None, models=Models(), trace=tr)
    src = (Row(Sample(f"t:{i}", i, "x", None, "image" if i % 2 else "text")) for i in range(12))

    def sink(row):
        tr.row(row)

    try:
        asyncio.run(stream(src, [stage("load"), stage("render", slot="generators"),
                                           stage("rank", slot="scorer")], ctx, sink))
    finally:
        tr.close()
    assert problems(list(read_events(path))) == []
    return analyse(load(path))


@pytest.mark.parametrize("slow", ["render", "rank"])
def test_the_verdict_names_the_stage_made_slow(cfg, tmp_path, slow):
    p = _run(cfg, tmp_path / "t.json.gz", slow)
    assert next(iter(p["stages"])) == slow
    assert p["verdict"][0].startswith(f"bottleneck: {slow} ")
    assert p["verdict"][1] == f"knob: {KNOBS[slow]}" + ("; `kbridge plan` shows where another render replica fits"
                                                        if slow == "render" else "")
    assert p["samples"] == 12 and p["stages"][slow]["samples"] == 12
    # its own work is the largest, and so is the queue wait the other rows spend behind it (4 in
    # flight, one worker per stage: render on generators-cpu, rank on scorer-cpu)
    for key in ("work_s", "wait_s"):
        assert p["stages"][slow][key] > max(s[key] for n, s in p["stages"].items() if n != slow), key
    worker = {"render": "generators-cpu", "rank": "scorer-cpu"}
    assert p["devices"][worker[slow]]["busy_share"] > p["devices"][worker[({"render", "rank"} - {slow}).pop()]][
        "busy_share"]
    assert all(d["calls"] == 12 for d in p["devices"].values())


def test_trace_kernels_merges_torch_profiler_ops_of_the_window_on_the_same_clock(cfg, tmp_path):
    """--trace-kernels 2..3: torch ops run on the stage's worker thread are in the trace, inside
    the device spans of the calls that ran them, and only around the window's samples."""
    import torch

    def mm(rows, ctx):
        a = torch.ones(64, 64)
        for _ in range(20):
            a = a @ a / 64
        return rows

    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=1, batch_wait_ms=1))
    path = tmp_path / "k.json.gz"
    tr = Tracer(TraceOptions(path, kernels=(2, 3)))
    ctx = Ctx(cfg=run_cfg, domain=None, models=Models(), trace=tr)
    src = (Row(Sample(f"t:{i}", i, "x", None, "image")) for i in range(8))
    try:
        asyncio.run(stream(src, [Stage("render", mm, "generators", lambda r, c: True, lambda c: 1)],
                           ctx, tr.row))
    finally:
        tr.close()
    events = list(read_events(path))
    assert problems(events) == []
    ops = [e for e in events if e.get("ph") == "X" and e.get("name") == "aten::mm" and e["pid"] >= 100]
    calls = [e for e in events if e.get("ph") == "X" and e.get("pid") == 1 and e.get("name") == "render"]
    assert len(calls) == 8 and len(ops) >= 20
    # every op lies inside a render call of sample 2 or 3, within the clock's recorded bound (+ 1 ms for
    # the profiler's own timestamps)
    tol = next(e for e in events if e.get("name") == "kbridge_kernels")["args"]["clock_error_us"] + 1000
    inside = [c for c in calls if c["args"]["ids"][0] in ("t:2", "t:3")]
    for op in ops:
        assert any(c["ts"] - tol <= op["ts"] and op["ts"] + op["dur"] <= c["ts"] + c["dur"] + tol for c in inside)


def test_the_busiest_window_holds_the_most_busy_time():
    from kbridge.engine.report.profile import busiest

    spans = [(0, 10), (100, 150), (120, 170), (180, 190), (300, 301)]
    assert busiest(spans, 100) == (100, 200)
    assert busiest(spans, 5) == (100, 105) and busiest([], 7) == (0, 7)


def test_engine_timings_of_an_lmm_request_nest_inside_its_span(tmp_path):
    """A request record with the engine's figures (vLLM's queue / prefill / decode seconds) gets
    them as nested spans, laid back from the answer's arrival; one without keeps the client span."""
    from types import SimpleNamespace

    t = 1000.0
    rec = lambda eng: SimpleNamespace(stage="extract", turn=1, prompt_tokens=50, generated_tokens=20,  # noqa: E731
                                      cached=False, start=t, end=t + 1.0, engine=eng)
    path = tmp_path / "t.json.gz"
    tr = Tracer(TraceOptions(path))
    tr.row(Row(Sample("s:0", 0, "x", None, "image"), lmm=(rec({"queue_s": 0.1, "prefill_s": 0.2, "decode_s": 0.5}),
                                                         rec(None)), admitted=t, timings=(("extract", t, t + 1.0),)),
           written=t + 1.5)
    tr.close()
    events = list(read_events(path))
    assert problems(events) == []
    req = [e for e in events if e.get("pid") == 3 and e["ph"] == "X"]
    assert [e["name"] for e in req] == ["extract", "queued", "prefill", "decode", "extract"]
    end = req[0]["ts"] + req[0]["dur"]
    assert [e["dur"] for e in req[1:4]] == [100000, 200000, 500000] and req[3]["ts"] + req[3]["dur"] == end
    assert req[4]["tid"] != req[0]["tid"] or req[4]["ts"] >= end  # the second request: its own lane
