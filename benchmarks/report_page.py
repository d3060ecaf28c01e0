"""Question ``report-page``: how long does ``kbridge report`` take to build (and a browser to
open) the page of a large run?

A synthetic run directory of N samples is written first (``synthetic_run``: half image-missing
with 4 generated image candidates, half text-missing with 4 captions, 5 triples per graph,
per-stage timings, 1 % of samples with an error, a small dataset beside it), then the page is
built from it as ``kbridge report`` does. Rows per N: the whole build, the per-sample records with
their two graph layouts, the two plots, the page size, and — where Debian's chromium and
chromium-driver are installed — the time until a headless Chromium has drawn the first page of
cards.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

WORDS = ("man woman dog cat table cup chair road tree car sky cloud boat river hat ball street lamp "
         "window door book plate spoon clock coin horse grass field").split()
RELATIONS = ("holds", "on", "next to", "under", "wears", "looks at", "behind", "rides")
STAGES_IMAGE = ("load", "extract", "write", "render", "candidate_knowledge", "rank", "store")
STAGES_TEXT = ("load", "extract", "write", "rank", "store")


def _triples(rng: random.Random, n: int) -> list[dict]:
    return [{"head": rng.choice(WORDS), "relation": rng.choice(RELATIONS), "tail": rng.choice(WORDS)}
            for _ in range(n)]


def _timings(rng: random.Random, stages, t0: float) -> dict:
    out, t = {}, t0
    for s in stages:
        d = rng.uniform(0.05, 2.0) if s in ("render", "write", "extract") else rng.uniform(0.005, 0.2)
        out[s] = {"start": round(t, 4), "end": round(t + d, 4), "seconds": round(d, 4)}
        t += d + rng.uniform(0, 0.3)
    return out


def synthetic_run(root: Path, samples: int, candidates: int = 4, seed: int = 0) -> Path:
    """Write a run directory of ``samples`` results (and its dataset) under ``root``; returns it."""
    rng = random.Random(seed)
    root = Path(root)
    run, data = root / "run", root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), (90, 140, 200)).save(data / "images" / "x.png")
    png = run / "images" / "synth" / "c.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 120, 60)).save(png)
    items, results, errors = [], [], []
    for i in range(samples):
        items.append({"file_name": "images/x.png", "labels": [], "captions": [" ".join(rng.choices(WORDS, k=8))]})
        missing = "image" if i % 2 == 0 else "text"
        cands = []
        for c in range(candidates):
            sem, gr = rng.random(), rng.random()
            cand = {"id": f"c{c}", "source": "generated", "seed": rng.getrandbits(63), "triples": _triples(rng, 4),
                    "scores": {"semantic": sem, "graph": gr, "total": (sem + gr) / 2}}
            if missing == "image":
                # every candidate links the same small PNG: building the page reads no pixels
                cand.update(image="images/synth/c.png", prompt=" ".join(rng.choices(WORDS, k=12)),
                            refined=c % 2 == 0)
            else:
                cand["text"] = " ".join(rng.choices(WORDS, k=10))
            cands.append(cand)
        best = max(cands, key=lambda x: x["scores"]["total"])["id"]
        results.append({"sample_id": f"synth:{i}", "index": i, "missing": missing,
                        "knowledge": {"objects": [{"name": w, "count": 1, "attributes": ["red"]}
                                                  for w in rng.sample(WORDS, 3)],
                                      "style": "photo", "triples": _triples(rng, 5)},
                        "candidates": cands, "best": best,
                        "counts": {"lmm_calls": 6, "prompt_tokens": 1400, "generated_tokens": 500,
                                   "unet_evals": 32 if missing == "image" else 0},
                        "timings": _timings(rng, STAGES_IMAGE if missing == "image" else STAGES_TEXT,
                                            i * 0.4 + rng.uniform(0, 0.2))})
        if i % 100 == 99:
            errors.append({"sample_id": f"synth:{i}", "stage": "rank", "error": "synthetic error", "time": 0})
    (data / "metadata.json").write_text(json.dumps(items))
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (run / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))
    (run / "manifest.json").write_text(json.dumps({
        "profile": "synthetic", "config": {}, "versions": {},
        "data": {"name": "synth", "root": str(data), "format": "coco", "items": samples},
        "totals": {"incomplete": samples, "finished": samples, "runs": 1}}))
    return run


def _open_seconds(page: Path) -> float | None:
    """Seconds from navigation until the first page of cards is drawn; None without chromium."""
    from kbridge.engine.report.browser import chromium, missing_reason

    if missing_reason():
        return None
    with chromium() as driver:
        t0 = time.perf_counter()
        driver.get(page.resolve().as_uri())
        driver.execute_script("return document.querySelectorAll('article.card').length")
        return time.perf_counter() - t0


def measure(samples: int, browser: bool = True) -> dict:
    from kbridge.engine.report import build_report, load_run
    from kbridge.engine.report import plots
    from kbridge.engine.report.page import cards

    tmp = Path(tempfile.mkdtemp(prefix="kbridge-report-bench-"))
    try:
        run_dir = synthetic_run(tmp, samples)
        t0 = time.perf_counter()
        page = build_report(run_dir)
        build = time.perf_counter() - t0
        run = load_run(run_dir)
        t0 = time.perf_counter()
        cards(run, run_dir, embed=False)
        t_cards = time.perf_counter() - t0
        t0 = time.perf_counter()
        plots.scores(run.results), plots.timeline(run.results)
        t_plots = time.perf_counter() - t0
        return {"name": f"{samples} samples", "samples": samples, "build_s": build, "records_and_layouts_s": t_cards,
                "plots_s": t_plots, "page_mb": page.stat().st_size / 1e6,
                "open_s": _open_seconds(page) if browser else None}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(sizes: tuple[int, ...] = (1000, 10000), browser: bool = True) -> dict:
    from kbridge.benchmarks.harness import stamp

    measure(50, browser=False)  # warm-up: imports (matplotlib, networkx) and first-use caches
    rows = [measure(n, browser) for n in sizes]
    return stamp({
        "question": "report-page", "title": "kbridge report: page build time for a large run",
        "how": "kbridge bench report-page",
        "columns": ["name", "build_s", "records_and_layouts_s", "plots_s", "page_mb", "open_s"], "rows": rows,
        "notes": ["Synthetic run (benchmarks/report_page.py): half image-missing, half text-missing, 4 candidates, "
                  "5 triples per graph, per-stage timings; one build each after a warm-up build of 50 samples "
                  "(the page is built once per run).",
                  "build_s is the whole `kbridge report` (reading the run, a networkx layout for the sample's and "
                  "the winner's graph, both plots, writing); records_and_layouts_s and plots_s are parts of it "
                  "measured again on their own.",
                  "open_s: headless Chromium from navigation to the first 50 cards drawn (– without chromium)."]})
