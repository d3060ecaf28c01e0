"""``kbridge bench serve --soak N``: a bounded soak of ``kbridge serve`` — N requests, every other
one a large upload (a noise PNG of several MB, text missing), the rest texts (image missing), a
fixed number in flight — while the server's resident memory is sampled from /proc. Reports the
answers by status, p50 / p99 latency, and peak RSS per quarter of the run: flat when finished jobs
release their inputs."""
from __future__ import annotations

import asyncio
import base64
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kbridge.benchmarks.harness import percentile, stamp
from kbridge.benchmarks.serve import Server, toml_text, requests_from_demo

COLUMNS = ["quarter", "requests_done", "peak_rss_mb"]


def _noise_png(side: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _soak(url: str, bodies: list[dict], in_flight: int, done: list) -> list[dict]:
    import httpx2 as httpx

    sem = asyncio.Semaphore(in_flight)
    recs: list[dict] = []
    async with httpx.AsyncClient(timeout=3600) as client:
        async def one(body: dict) -> None:
            async with sem:
                a = time.perf_counter()
                try:
                    code = (await client.post(f"{url}/v1/complete", json=body)).status_code
                except httpx.HTTPError:
                    code = 0
                recs.append({"code": code, "latency": time.perf_counter() - a, "upload": "image" in body})
                done.append(1)

        await asyncio.gather(*(one(b) for b in bodies))
    return recs


def run(profile: str = "tiny", n: int = 200, side: int = 1400, in_flight: int = 8) -> dict:
    texts = requests_from_demo(n, "soak")
    texts = [b for b in texts if b["missing"] == "image"] or texts
    uploads = [base64.b64encode(_noise_png(side, s)).decode() for s in range(4)]
    bodies = []
    for k in range(n):
        if k % 2:
            bodies.append({"sample_id": f"soak:{k}", "missing": "text", "image": uploads[k % len(uploads)],
                           "candidates": 1})
        else:
            bodies.append({**texts[k % len(texts)], "sample_id": f"soak:{k}", "candidates": 1, "steps": 2})
    cfg_file = Path(tempfile.mkdtemp(prefix="kbridge-bench-soak-")) / "soak.toml"
    cfg_file.write_text(toml_text({"generation": {"candidates": 2}, "lmm": {"free_text_tokens": 32}}))
    srv = Server(["-m", "kbridge.cli", "serve", "--profile", profile, "--config", str(cfg_file), "--port", "{port}",
                   "--max-queue", "100000", "--request-timeout-s", "3600"])
    done: list = []
    samples: list[tuple[int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((len(done), _rss_mb(srv.p.pid)))
            stop.wait(0.25)

    t = threading.Thread(target=sample, daemon=True)
    try:
        start_rss = _rss_mb(srv.p.pid)
        t.start()
        t0 = time.time()
        recs = asyncio.run(_soak(srv.url, bodies, in_flight, done))
        wall = time.time() - t0
    finally:
        stop.set()
        t.join(5)
        srv.stop()
    rows = []
    for q in range(4):
        lo, hi = n * q // 4, n * (q + 1) // 4
        rss = [m for d, m in samples if lo <= d < hi or (q == 3 and d == n)]
        rows.append({"quarter": q + 1, "requests_done": f"{lo}-{hi}", "peak_rss_mb": round(max(rss), 1) if rss else None})
    lat = [r["latency"] for r in recs if r["code"] == 200]
    codes: dict = {}
    for r in recs:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    mb = len(base64.b64decode(uploads[0])) / 2**20
    notes = [f"{n} requests, {in_flight} in flight, every other one a {side}x{side} noise PNG upload "
             f"({mb:.1f} MB; text missing), the others texts (image missing, 2 steps); 1 candidate each; answers by "
             f"status {codes}; {wall:.0f} s",
             f"latency of the 200s: p50 {statistics.median(lat):.2f} s, p99 {percentile(lat, 99):.2f} s" if lat else
             "no request succeeded",
             f"server RSS before the soak {start_rss:.0f} MB; peak per quarter in the table (flat: finished jobs "
             "keep no decoded input)"]
    return stamp({"question": "serve_soak", "title": f"Serving: bounded soak with large uploads ({profile})",
                  "how": f"kbridge bench serve --soak {n}", "profile": profile, "columns": COLUMNS, "rows": rows,
                  "codes": {str(k): v for k, v in codes.items()},
                  "p50_s": statistics.median(lat) if lat else None, "p99_s": percentile(lat, 99) if lat else None,
                  "notes": notes})
