"""Concurrent clients of kbridge serve get what ``kbridge run`` writes for the same sample ids and
seed, under the determinism promise's cross-setting rule (tests/helpers/promise.py), with the real tiny
models (LMM included). Responses are written as a run directory (results.jsonl + PNGs at the
run's relative paths) and compared per sample."""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

from tests.helpers import promise
from kbridge.engine import data as D
from kbridge.engine.store import _image_rel


def _request(ds, index: int, missing: str) -> dict:
    rec = ds.items[index]
    body = {"sample_id": f"{ds.name}:{index}", "missing": missing}
    if missing == "image":
        body["text"] = D.text_of(rec, ds.format)
    else:
        body["image"] = base64.b64encode(D.image_path(ds, rec["file_name"]).read_bytes()).decode()
    return body


def _as_run_dir(results: list[dict], out: Path) -> Path:
    """Inline images → PNG files at the paths a run would use; lines → results.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w") as f:
        for r in results:
            for c in r["candidates"]:
                if "image" in c:
                    rel = _image_rel(r["sample_id"], c["id"])
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_bytes(base64.b64decode(c["image"].split(",", 1)[1]))
                    c["image"] = rel
            f.write(json.dumps(r) + "\n")
    return out


def test_concurrent_requests_agree_with_kbridge_run(cfg, engine, tmp_path):
    from tests.engine.serve.serve_helpers import running, serve_engine

    run_dir = tmp_path / "run"
    rep = engine.run(out=run_dir, limit=4)  # demo 0, 2 (image missing), 3, 4 (text missing)
    assert rep.completed == 4 and not rep.errors
    ran = list(promise.rows(run_dir).values())
    ds = D.open_dataset(None)
    bodies = [_request(ds, r["index"], r["missing"]) for r in ran]
    # the same request twice without a sample id: the default id hashes the content
    again = {k: v for k, v in next(b for b in bodies if b["missing"] == "image").items() if k != "sample_id"}
    # several rows per dense call, so requests really share render and rank batches
    eng = serve_engine(cfg, engine, None, run={"dense_rows": 4})
    with running(eng) as (url, svc):
        with httpx.Client(timeout=600) as client, ThreadPoolExecutor(len(bodies) + 2) as pool:
            resps = list(pool.map(lambda b: client.post(f"{url}/v1/complete", json=b), bodies + [again, again]))
    assert [r.status_code for r in resps] == [200] * len(resps), [r.text[:200] for r in resps]
    *served, a, b = [r.json() for r in resps]
    assert {r["sample_id"] for r in served} == {r["sample_id"] for r in ran}
    for r in served:
        assert set(r["timings"]) >= {"extract", "write", "rank", "request", "queue"}
        assert r["counts"]["lmm_calls"] > 0
    ties = promise.cross_settings(run_dir, _as_run_dir(served, tmp_path / "served"))
    assert len(ties) <= 1, ties
    assert a["sample_id"] == b["sample_id"] and a["sample_id"].startswith("req:")
    for k in ("prompt", "seed"):
        assert [c.get(k) for c in a["candidates"]] == [c.get(k) for c in b["candidates"]], k
    assert a["knowledge"] == b["knowledge"]
    for ca, cb in zip(a["candidates"], b["candidates"]):
        assert abs(ca["scores"]["total"] - cb["scores"]["total"]) <= promise.SCORE_TOL
