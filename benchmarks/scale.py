"""Question ``scale``: does memory stay flat as the dataset grows?

For synthetic COCO-layout datasets of 1k, 10k and 50k records (8 distinct 640×480 JPEGs re-used
across records, mixed 0.7 missing config), ``kbridge run`` (tiny default, no ``--limit``) runs in a
subprocess; the peak RSS of its whole process tree is sampled until the first 16 samples have
completed, then the run is stopped. The streaming executor decodes an image only when its sample
is admitted (``run.rows_in_flight`` at a time) and keeps only finished ids for resume, so the
figure should not depend on the dataset's size. v0.1 (commit 9a800ef) decoded every selected
image before the first LMM call: 771 MB at 300 records and 1,909 MB at 3,000 (1.2 MB per decoded
image, linear; ≈ 42 GB at 50k), measured when the execution-core issue was filed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kbridge.benchmarks.harness import stamp

COLUMNS = ["name", "records", "incomplete", "peak_rss_mb", "vs_1k"]
OLD = [{"name": "v0.1 executor (commit 9a800ef, quoted)", "records": 300, "peak_rss_mb": 771},
       {"name": "v0.1 executor (commit 9a800ef, quoted)", "records": 3000, "peak_rss_mb": 1909}]


def coco_like(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` records cycling over 8 small JPEGs, and a mixed 0.7 missing config."""
    from PIL import Image

    from kbridge.engine.data import DEMO_DIR, make_missing

    (root / "images").mkdir(parents=True, exist_ok=True)
    srcs = sorted((DEMO_DIR / "images").glob("*.jpg"))[:8]
    names = []
    for i, src in enumerate(srcs):
        name = f"images/{i}.jpg"
        Image.open(src).convert("RGB").resize((640, 480)).save(root / name, quality=90)
        names.append(name)
    caps = json.loads((DEMO_DIR / "metadata.json").read_text())
    items = [{"file_name": names[i % len(names)], "labels": caps[i % len(caps)].get("labels", []),
              "captions": caps[i % len(caps)]["captions"]} for i in range(n)]
    (root / "metadata.json").write_text(json.dumps(items))
    (root / "category.json").write_text((DEMO_DIR / "category.json").read_text())
    (root / "missing.json").write_text(json.dumps(make_missing(n, "mixed", 0.7, seed)))
    return root


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def peak_rss(data: Path, out: Path, first: int = 16, timeout_s: float = 1800.0) -> int:
    cmd = [sys.executable, "-m", "kbridge.cli", "run", "--data", str(data), "--format", "coco",
           "--missing", str(data / "missing.json"), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    peak, t0 = 0, time.monotonic()
    results = out / "results.jsonl"
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout_s:
            peak = max(peak, _tree_rss(proc.pid))
            if results.exists() and results.read_bytes().count(b"\n") >= first:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return peak


def run(sizes: tuple[int, ...] = (1000, 10000, 50000), first: int = 16) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="kbridge-scale-") as tmp:
        for n in sizes:
            data = coco_like(Path(tmp) / f"coco-{n}", n)
            miss = json.loads((data / "missing.json").read_text())["num_missing"]
            mb = peak_rss(data, Path(tmp) / f"out-{n}", first) / 1e6
            rows.append({"name": "streaming executor", "records": n, "incomplete": miss, "peak_rss_mb": round(mb, 1)})
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["vs_1k"] = round(r["peak_rss_mb"] / base, 3)
    flat = max(r["vs_1k"] for r in rows)
    return stamp({
        "question": "scale", "title": "Peak RSS after the first 16 samples, by dataset size (tiny profile)",
        "how": f"kbridge bench scale --sizes {','.join(map(str, sizes))}",
        "columns": COLUMNS, "rows": rows + OLD,
        "notes": [f"largest / 1k figure: {flat:.3f} (target: within 1.15)",
                  "v0.1 rows are quoted from the issue's measurement (not re-run here); at 50k records v0.1 "
                  "would need about 42 GB before its first LMM call"],
    })
