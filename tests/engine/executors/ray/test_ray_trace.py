"""``--executor ray --trace``: the actors' stage calls reach the driver's trace (one device track
per actor process, ``<slot> pid<N>@<node>``), every sample is in it, and the sample spans agree
with the results lines. On one machine every actor reads the driver's clock (skew 0)."""
import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.api import Engine
from kbridge.engine.trace import TraceOptions
from kbridge.engine.trace.check import problems
from kbridge.engine.trace.io import read_events
from kbridge.engine.trace.profile import _samples, load, profile

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_ray_run_traces_every_sample_and_every_actor_call(cfg, ray_cluster, tmp_path):
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=1)))
    eng.loaders["lmm"] = lambda _: FakeLMM()
    out = tmp_path / "o"
    rep = eng.run(out=out, executor="ray", trace=TraceOptions(out / "trace.json.gz"))
    assert rep.completed == 8 and not rep.errors
    events = list(read_events(out / "trace.json.gz"))
    assert problems(events) == []
    results = {json.loads(ln)["sample_id"]: json.loads(ln) for ln in Path(out / "results.jsonl").read_text().splitlines()}
    tr = load(out / "trace.json.gz")
    samples = _samples(tr)
    assert sorted(s["span"]["args"]["id"] for s in samples) == sorted(results)
    for s in samples:
        timings = results[s["span"]["args"]["id"]]["timings"]
        for p in s["parts"]:
            if not p["name"].startswith("wait ") and p["name"] != "sink":
                assert p["dur"] / 1e6 == pytest.approx(timings[p["name"]]["seconds"], abs=1e-3)
    workers = {n for (pid, _), n in tr["names"].items() if pid == 1}
    assert workers and all(re.fullmatch(r"(lmm|generators|scorer|io) pid\d+@[\d.:a-f]+( #\d+)?", w) for w in workers)
    renders = [e for e in events if e.get("pid") == 1 and e.get("name") == "render"]
    assert sum(e["args"]["n"] for e in renders) == sum(r["missing"] == "image" for r in results.values())
    assert profile(out)["samples"] == 8
