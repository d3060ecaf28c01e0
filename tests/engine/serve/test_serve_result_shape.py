"""A served result is a results.jsonl line (one writer, store.result_line): the same keys at every
level, selective refinement's ``refined`` flags and preview decodes included, with the request's
``queue`` and ``request`` spans added to its timings."""
from __future__ import annotations

import base64
import dataclasses

import httpx2 as httpx

from tests.helpers import promise
from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine import data as D

K = 2


def _body(ds, line: dict) -> dict:
    rec = ds.items[line["index"]]
    body = {"sample_id": line["sample_id"], "missing": line["missing"]}
    if line["missing"] == "image":
        body["text"] = D.text_of(rec, ds.format)
    else:
        body["image"] = base64.b64encode(D.image_path(ds, rec["file_name"]).read_bytes()).decode()
    return body


def test_served_results_have_the_shape_of_results_lines(cfg, engine, tmp_path):
    from tests.engine.serve.serve_helpers import running, serve_engine

    assert cfg.generation.refiner and cfg.generation.candidates > K
    c = dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, refine_top=K))
    eng = serve_engine(c, engine, FakeLMM())
    assert not eng.run(out=tmp_path / "run", limit=3).errors
    lines = promise.rows(tmp_path / "run")
    assert {r["missing"] for r in lines.values()} == {"image", "text"}
    ds = D.open_dataset(None)
    with running(eng) as (url, _):
        with httpx.Client(timeout=600) as client:
            served = [client.post(f"{url}/v1/complete", json=_body(ds, r)).json() for r in lines.values()]
    for s in served:
        line = lines[s["sample_id"]]
        assert set(s) == set(line)
        assert set(s["knowledge"]) == set(line["knowledge"]) and set(s["counts"]) == set(line["counts"])
        assert [set(x) for x in s["candidates"]] == [set(x) for x in line["candidates"]]
        assert set(s["timings"]) - {"queue", "request", "load"} == set(line["timings"]) - {"load"}
        if s["missing"] == "image":
            for r in (s, line):
                assert [x["refined"] for x in r["candidates"]].count(True) == K
                assert r["counts"]["preview_decodes"] == len(r["candidates"]) > K
        else:
            assert not any("refined" in x for x in s["candidates"]) and s["counts"]["preview_decodes"] == 0
