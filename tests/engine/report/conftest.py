"""Fixtures for the report tests: a real demo run, decorated copies, a headless Chromium."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.jsonl import read_jsonl, write_jsonl

PAYLOAD = '<script>window.__kbPwned = 1</script><img src="x" onerror="window.__kbPwned = 2">'
"""Injected into a dataset caption, a candidate caption and a triple: must show as text, never run."""


def synthetic_timings(results: list[dict]) -> None:
    """What newer runs add to every line: per-stage start/end (s since the run start), the
    sample's lifetime (``sample``: admitted → stored), and ``refined`` on image candidates.
    Samples are admitted 0.5 s apart, so their stages overlap."""
    for k, r in enumerate(results):
        stages = ["load", "extract", "write", "render", "candidate_knowledge", "rank", "store"] \
            if r["missing"] == "image" else ["load", "extract", "write", "rank", "store"]
        admitted = 0.5 * k
        t, r["timings"] = admitted + 0.05, {}
        for j, s in enumerate(stages):
            d = 0.2 + 0.1 * j
            r["timings"][s] = {"start": round(t, 3), "end": round(t + d, 3), "seconds": round(d, 3)}
            t += d
        r["timings"]["sample"] = {"start": admitted, "end": round(t, 3), "seconds": round(t - admitted, 3)}
        for c in r["candidates"]:
            if c.get("image"):
                c["refined"] = c["id"] != "c0"


@pytest.fixture(scope="session")
def decorated_run(demo_run, tmp_path_factory):
    """A copy of the real demo run with timings and ``refined`` fields, one candidate marked
    retrieved (by faiss), the payload in the
    dataset caption of the first image-missing sample, in the first caption candidate of the first
    text-missing sample and in a triple, plus two error lines (one for a stored sample, one for a
    sample that failed to load)."""
    src, _ = demo_run
    root = tmp_path_factory.mktemp("decorated")
    run = root / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("report*.html", "cache.sqlite"))
    manifest = json.loads((run / "manifest.json").read_text())
    data = root / "data"
    shutil.copytree(manifest["data"]["root"], data)
    manifest["data"]["root"] = str(data)
    (run / "manifest.json").write_text(json.dumps(manifest))
    results = read_jsonl(run / "results.jsonl")
    synthetic_timings(results)
    img_missing = next(r for r in results if r["missing"] == "image")
    txt_missing = next(r for r in results if r["missing"] == "text")
    items = json.loads((data / "metadata.json").read_text())
    items[img_missing["index"]]["captions"] = [PAYLOAD]
    (data / "metadata.json").write_text(json.dumps(items))
    txt_missing["candidates"][0]["text"] = PAYLOAD
    txt_missing["candidates"][1].update(source="retrieved", retriever="faiss")
    txt_missing["knowledge"]["triples"].append({"head": PAYLOAD, "relation": PAYLOAD, "tail": "x"})
    write_jsonl(run / "results.jsonl", results)
    write_jsonl(run / "errors.jsonl", [
        {"sample_id": img_missing["sample_id"], "stage": "rank", "error": "injected: " + PAYLOAD, "time": 0},
        {"sample_id": "demo:99", "stage": "load", "error": "index 99 is past the end of the dataset", "time": 0}])
    return run, results


@pytest.fixture(scope="session")
def browser():
    from kbridge.engine.report.browser import chromium, missing_reason

    reason = missing_reason()
    if reason and os.environ.get("KBRIDGE_REQUIRE_BROWSER"):  # .ci/run: a skip would hide a broken page
        pytest.fail(f"KBRIDGE_REQUIRE_BROWSER is set but there is no headless browser: {reason}")
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    with chromium() as driver:
        yield driver
