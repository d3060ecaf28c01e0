"""The determinism promise (README, *Determinism*), as two comparisons of run directories.

- ``same_settings(a, b)``: same seed, configuration, thread count and batch composition. Every
  ``results.jsonl`` line is identical apart from its timing fields, and every image is bit-identical.
  Lines are compared by sample id (a streaming run writes them in completion order).
- ``cross_settings(a, b)``: other thread counts, batch sizes, in-flight limits, schedules or
  executors. The same candidate ids, prompts, texts, seeds and knowledge; images within 2 grey
  levels; scores within 1e-3; the same ``best`` unless two totals are within 1e-3 (a near-tie,
  returned so a test can report it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

GREY_LEVELS = 2
SCORE_TOL = 1e-3
TIMING_FIELDS = ("timings", "lmm_engine")
"""Measured per run, not computed: the stage timings and the engine's own request figures (vLLM)."""


def rows(run: Path) -> dict[str, dict]:
    lines = [ln for ln in (Path(run) / "results.jsonl").read_text().splitlines() if ln.strip()]
    out = {}
    for ln in lines:
        r = json.loads(ln)
        assert r["sample_id"] not in out, f"{run}: {r['sample_id']} written twice"
        out[r["sample_id"]] = r
    return out


def _untimed(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in TIMING_FIELDS}


def same_settings(a: Path, b: Path, only: set[str] | None = None) -> None:
    ra, rb = rows(a), rows(b)
    keys = only if only is not None else set(ra)
    assert keys <= set(ra) and keys <= set(rb), (sorted(keys - set(ra)), sorted(keys - set(rb)))
    for sid in sorted(keys):
        ja = json.dumps(_untimed(ra[sid]), sort_keys=True)
        jb = json.dumps(_untimed(rb[sid]), sort_keys=True)
        assert ja == jb, f"{sid}: results differ under the same settings"
        for c in ra[sid]["candidates"]:
            if "image" in c:
                pa, pb = np.asarray(Image.open(Path(a) / c["image"])), np.asarray(Image.open(Path(b) / c["image"]))
                assert np.array_equal(pa, pb), f"{sid}/{c['id']}: image not bit-identical"


def cross_settings(a: Path, b: Path, only: set[str] | None = None, counts: bool = False) -> list[str]:
    """Assert the cross-setting rule; return the sample ids whose ``best`` differs in a near-tie."""
    ra, rb = rows(a), rows(b)
    keys = only if only is not None else set(ra)
    assert keys <= set(ra) and keys <= set(rb), (sorted(keys - set(ra)), sorted(keys - set(rb)))
    ties = []
    for sid in sorted(keys):
        x, y = ra[sid], rb[sid]
        assert x["knowledge"] == y["knowledge"], f"{sid}: knowledge differs"
        assert [c["id"] for c in x["candidates"]] == [c["id"] for c in y["candidates"]], f"{sid}: candidate ids"
        for ca, cb in zip(x["candidates"], y["candidates"]):
            for k in ("source", "prompt", "text", "seed", "triples"):
                assert ca.get(k) == cb.get(k), f"{sid}/{ca['id']}: {k} differs"
            for k in ("semantic", "graph", "total"):
                assert abs(ca["scores"][k] - cb["scores"][k]) <= SCORE_TOL, \
                    f"{sid}/{ca['id']}: {k} {ca['scores'][k]} vs {cb['scores'][k]}"
            if "image" in ca:
                pa = np.asarray(Image.open(Path(a) / ca["image"]), dtype=np.int16)
                pb = np.asarray(Image.open(Path(b) / cb["image"]), dtype=np.int16)
                d = int(np.abs(pa - pb).max())
                assert d <= GREY_LEVELS, f"{sid}/{ca['id']}: images differ by {d} grey levels"
        if x["best"] != y["best"]:
            tot = {c["id"]: c["scores"]["total"] for c in x["candidates"]}
            assert abs(tot[x["best"]] - tot[y["best"]]) <= SCORE_TOL, f"{sid}: best {x['best']} vs {y['best']}"
            ties.append(sid)
        if counts:
            assert x.get("counts") == y.get("counts"), f"{sid}: counts differ"
    return ties
