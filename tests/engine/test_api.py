"""End-to-end runs through the Python API on the tiny profile."""
import json

import pytest
from PIL import Image

from tests.helpers.jsonl import read_jsonl
from kbridge.engine import data as D
from kbridge.engine.api import Engine
from kbridge.engine.config import build_config
from kbridge.engine.store import RunConfigMismatch


def test_results_contract(demo_run):
    out, report = demo_run
    rows = read_jsonl(out / "results.jsonl")
    ds = D.open_dataset()
    assert report.completed == len(rows) == len(ds.missing) == 8 and not report.errors
    assert sorted(r["sample_id"] for r in rows) == sorted(f"demo:{i}" for i in ds.missing)
    for r in rows:
        assert r["missing"] == ds.missing[r["index"]]
        assert r["knowledge"]["triples"] and all(set(t) == {"head", "relation", "tail"}
                                                 for t in r["knowledge"]["triples"])
        ids = [c["id"] for c in r["candidates"]]
        assert len(ids) == len(set(ids)) >= 1
        for c in r["candidates"]:
            assert set(c["scores"]) == {"semantic", "graph", "total"}
            assert all(0.0 <= v <= 1.0 for v in c["scores"].values())
            if r["missing"] == "image":
                assert Image.open(out / c["image"]).size == (64, 64)
                assert c["prompt"] and c["seed"] >= 0
            else:
                assert c["text"] and "image" not in c
        top = max(r["candidates"], key=lambda c: c["scores"]["total"])
        assert top["scores"]["total"] == next(c for c in r["candidates"] if c["id"] == r["best"])["scores"]["total"]
    seeds = [c["seed"] for r in rows if r["missing"] == "image" for c in r["candidates"]]
    assert len(seeds) == len(set(seeds)), "every (sample, candidate) has its own seed"
    man = json.loads((out / "manifest.json").read_text())
    assert man["profile"] == "tiny" and man["config"]["generation"]["candidates"] == 4
    assert man["totals"]["finished"] == 8 and man["versions"]["torch"]
    assert man["counts_by_missing"]["image"]["lmm_serial_turns"] == 3
    assert man["counts_by_missing"]["text"]["lmm_serial_turns"] == 3  # captions' triples extracted after them


def test_counted_figures_fast_path(demo_run):
    out, _ = demo_run
    for r in read_jsonl(out / "results.jsonl"):
        n = len(r["candidates"])
        c = r["counts"]
        if r["missing"] == "image":
            assert c["lmm_calls"] == 1 + 2 * n  # extract, n parallel prompts, one triple pass per candidate image
            assert c["unet_evals"] == n * 2 * 4 and c["vae_decodes"] == n
        else:  # extract, n parallel captions, one triple pass per caption (caption_triples_from = "extracted")
            assert c["lmm_calls"] == 1 + 2 * n and c["unet_evals"] == 0


def test_same_config_reproduces_scores(engine, demo_run, tmp_path):
    out, _ = demo_run
    engine.run(out=tmp_path / "again", limit=3)
    first = {r["sample_id"]: r for r in read_jsonl(out / "results.jsonl")}
    for r in read_jsonl(tmp_path / "again" / "results.jsonl"):
        ref = first[r["sample_id"]]
        assert r["best"] == ref["best"]
        assert [c["scores"]["total"] for c in r["candidates"]] == \
            pytest.approx([c["scores"]["total"] for c in ref["candidates"]], abs=1e-6)


def test_rerun_skips_finished_samples_and_refuses_other_config(engine, demo_run):
    out, _ = demo_run
    again = engine.run(out=out)
    assert again.completed == 0 and again.skipped == 8
    assert len(read_jsonl(out / "results.jsonl")) == 8
    other = Engine(build_config("tiny", overrides={"generation": {"candidates": 2}}))
    with pytest.raises(RunConfigMismatch, match="another configuration"):
        other.run(out=out)


def _bad_dataset(root):
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (20, 16), "blue").save(root / "images" / "ok.png")
    (root / "images" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    items = [
        {"file_name": "images/ok.png", "labels": [], "captions": ["a blue square"]},     # 0 text missing: ok
        {"file_name": "images/ok.png", "labels": [], "captions": ["a blue square"]},     # 1 image missing: ok
        {"file_name": "images/gone.png", "labels": [], "captions": ["x"]},               # 2 text missing: no file
        {"file_name": "images/ok.png", "labels": [], "captions": ["  "]},                # 3 image missing: empty
        {"file_name": "images/bad.jpg", "labels": [], "captions": ["y"]},                # 4 text missing: corrupt
    ]
    (root / "metadata.json").write_text(json.dumps(items))
    miss = {"missing_details": {"0": [0, 1], "1": [1, 0], "2": [0, 1], "3": [1, 0], "4": [0, 1], "99": [1, 0]}}
    (root / "missing.json").write_text(json.dumps(miss))
    return root


def test_bad_input_is_reported_per_sample_and_the_run_goes_on(engine, tmp_path, caplog):
    root = _bad_dataset(tmp_path / "toy")
    report = engine.run(data=root, fmt="coco", missing=root / "missing.json", out=tmp_path / "out")
    assert report.completed == 2
    errs = read_jsonl(tmp_path / "out" / "errors.jsonl")
    by_id = {e["sample_id"]: e["error"] for e in errs}
    assert set(by_id) == {"toy:2", "toy:3", "toy:4", "toy:99"}
    assert "image file not found" in by_id["toy:2"]
    assert "text is empty" in by_id["toy:3"]
    assert "unreadable image" in by_id["toy:4"]
    assert "past the end" in by_id["toy:99"]
    assert {r["sample_id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")} == {"toy:0", "toy:1"}
    assert any("toy:2" in m for m in caplog.messages)  # one line on screen per bad sample


def test_export_completed_writes_reference_layout(engine, demo_run, tmp_path):
    out, _ = demo_run
    rep = engine.run(out=out, export=tmp_path / "completed")
    meta = json.loads((tmp_path / "completed" / "metadata.json").read_text())
    ds = D.open_dataset()
    assert rep.exported["samples"] == len(meta) == len(ds)
    results = {r["index"]: r for r in read_jsonl(out / "results.jsonl")}
    for i, rec in enumerate(meta):
        assert (tmp_path / "completed" / rec["file_name"]).exists()
        assert rec["captions"] and rec["captions"][0]
        if ds.missing.get(i) == "text":
            best = next(c for c in results[i]["candidates"] if c["id"] == results[i]["best"])
            assert rec["captions"] == [best["text"]]
    assert (tmp_path / "completed" / "category.json").exists()


def test_reference_fidelity_keeps_the_multi_turn_chain(tmp_path):
    n = 2
    eng = Engine(build_config("tiny", overrides={"run": {"fidelity": "reference"},
                                                 "generation": {"candidates": n}}))
    eng.run(out=tmp_path / "ref", limit=3)  # demo:0 and demo:2 lack their image, demo:3 its text
    rows = {r["sample_id"]: r for r in read_jsonl(tmp_path / "ref" / "results.jsonl")}
    img = next(r for r in rows.values() if r["missing"] == "image" and len(r["candidates"]) == n)
    txt = next(r for r in rows.values() if r["missing"] == "text" and len(r["candidates"]) == n)
    # image: 4 extract + scene + n descriptions + n compressions + 4 per candidate re-extraction
    # (47 calls, 17 turns at n = 7: the reference's own figures)
    assert img["counts"]["lmm_calls"] == 4 + 1 + 2 * n + 4 * n
    assert img["counts"]["lmm_serial_turns"] == 4 + 1 + n + 1 + 4
    # text: 4 extract + a description turn + the captions call + 4 per candidate (34 calls, 10 turns at 7)
    assert txt["counts"]["lmm_calls"] == 4 + 2 + 4 * n
    assert txt["counts"]["lmm_serial_turns"] == 4 + 2 + 4
    assert all(r["knowledge"]["triples"] for r in rows.values())
