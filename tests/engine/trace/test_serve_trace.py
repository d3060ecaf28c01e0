"""``kbridge serve --trace``: every request that went through the long-lived stream is in the trace
(its sample span, stages and LMM requests), the trace validates, and it is complete once the
service has drained (the stream's end closes it)."""
import asyncio

from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.data import DEMO_DIR, load_image
from kbridge.engine.trace import TraceOptions, Tracer
from kbridge.engine.trace.check import problems
from kbridge.engine.trace.io import read_events
from kbridge.engine.trace.profile import profile
from kbridge.engine.types import Sample
from tests.engine.serve.serve_helpers import serve_engine


def test_a_served_stream_traces_every_request(cfg, engine, tmp_path):
    from kbridge.engine.serve.jobs import Service

    path = tmp_path / "serve-trace.json.gz"
    svc = Service(serve_engine(cfg, engine, FakeLMM(continuous=True)), None, Tracer(TraceOptions(path)))
    img = load_image(DEMO_DIR / "images" / "coffee.jpg")
    samples = [Sample(f"req:{i}", i, None if i % 2 else "a red cup on a wooden table", img if i % 2 else None,
                      "text" if i % 2 else "image") for i in range(6)]

    async def main():
        await svc.start()
        jobs = [svc.submit(s) for s in samples]
        rows = [await svc.wait(j) for j in jobs]
        await svc.drain(30)
        return rows

    rows = asyncio.run(main())
    assert [r.error for r in rows] == [None] * 6
    assert svc.tracer.closed
    events = list(read_events(path))
    assert problems(events) == []
    ids = sorted(e["args"]["id"] for e in events if e.get("name") == "sample" and e["ph"] == "X")
    assert ids == sorted(s.sample_id for s in samples)
    assert sum(1 for e in events if e.get("pid") == 3 and e["ph"] == "X") == sum(
        len([x for x in r.lmm if not x.cached]) for r in rows)
    p = profile(tmp_path, path)
    assert p["samples"] == 6 and set(p["kinds"]) == {"image", "text"}
