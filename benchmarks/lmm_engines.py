"""``kbridge bench lmm`` with vLLM: the hf backend in-process vs vLLM in-process vs vLLM over HTTP
on the same requests, at 1, 8 and 32 requests in flight (``REQUESTS``: how many at each level).

The workload is the ranking stage's triple extraction from the demo images under the ``small``
profile (its schema bounds and token caps: the real prompt and answer sizes of that profile).
hf runs the ``small`` Qwen2-VL twin (``k`` sequences decoded together, batch after batch); vLLM
runs the ``small`` Idefics3 twin (same text width and depth; vLLM's Qwen2-VL needs torchvision,
absent on CPU), in-process (``AsyncLLM``, at most ``k`` requests in flight) and behind ``kbridge
lmm serve -p small`` (the HTTP client with ``concurrency = k``). Per level: requests/s, generated
tokens/s, p50 / p95 latency per request, and the share of prompt tokens served from vLLM's prefix
cache. The machine's load average is recorded: other jobs share a small CPU.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from kbridge.benchmarks.harness import percentile

REQUESTS = {1: 8, 8: 16, 32: 32}
"""Requests sent at each level (requests in flight → requests), the same ones (the first N of one
workload) for every engine. What a level's figure needs: at 1 in flight the requests run one after
another, so 8 give a rate and a median (their p95 is the slowest); at k in flight at least k, or
the level is never reached — 16 at 8 is two waves, so the figure holds a full batch, not only
its start and drain; 32 at 32 is one full wave, the most the hf rows can afford (hf decodes a
batch until its longest answer ends, and random twins often run to their token caps). The hf rows
take most of the time: the full mode runs in about 20 minutes on a quiet 2-core machine."""
QUICK = {1: 4, 8: 8}
"""``--quick``: a check that every engine runs, not a figure to compare."""


def _workload(cfg, n: int):
    from kbridge.benchmarks.lmm import workload as triples_of_images

    return triples_of_images(cfg, n)


async def _timed(generate, reqs, k: int, per_call: bool):
    """(generations, per-request latencies, wall seconds) with at most ``k`` in flight.
    ``per_call``: ``generate`` takes one request (vLLM, HTTP); else ``k`` at a time (hf)."""
    lat = [0.0] * len(reqs)
    gens: list = [None] * len(reqs)
    t0 = time.perf_counter()
    if per_call:
        sem = asyncio.Semaphore(k)

        async def one(i):
            async with sem:
                a = time.perf_counter()
                gens[i] = (await generate([reqs[i]]))[0]
                lat[i] = time.perf_counter() - a

        await asyncio.gather(*(one(i) for i in range(len(reqs))))
    else:
        for s in range(0, len(reqs), k):
            a = time.perf_counter()
            out = await generate(reqs[s:s + k])
            for j, g in enumerate(out):
                gens[s + j], lat[s + j] = g, time.perf_counter() - a
    return gens, lat, time.perf_counter() - t0


def _row(name: str, k: int, gens, lat, wall: float) -> dict:
    errors = [g.error for g in gens if g.error]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} requests failed, e.g. {errors[0]}")
    tokens = sum(g.generated_tokens for g in gens)
    prompt = sum(g.prompt_tokens for g in gens)
    cached = sum((g.engine or {}).get("cached_prompt_tokens", 0) for g in gens)
    return {"name": f"{name}, {k} in flight", "in_flight": k, "requests": len(gens), "seconds": wall,
            "req_per_s": len(gens) / wall, "gen_tok_per_s": tokens / wall,
            "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95),
            "prefix_cache_hit": (cached / prompt) if prompt and name != "hf in-process" else None}


def _level_rows(name, generate, reqs, per_call: bool, plan: dict[int, int]) -> list[dict]:
    """One row per level of ``plan`` (in flight → requests: the first that many of ``reqs``)."""
    rows = []
    asyncio.run(_timed(generate, reqs[:2], 2, per_call))  # warm-up (first-call overheads, grammar compile)
    for k, n in plan.items():
        gens, lat, wall = asyncio.run(_timed(generate, reqs[:n], k, per_call))
        rows.append(_row(name, k, gens, lat, wall))
    return rows


def run(quick: bool = False, python: str | None = None) -> dict:
    from kbridge.benchmarks.harness import stamp
    from kbridge.engine.config import build_config
    from kbridge.engine import zoo
    from kbridge.engine.lmm.hf import HFBackend
    from kbridge.engine.lmm.vllm_local import VLLMBackend, model_dir

    plan = QUICK if quick else REQUESTS
    load_before = os.getloadavg()
    cfg = build_config("small")
    reqs = _workload(cfg, max(plan.values()))
    rows: list[dict] = []
    hf = HFBackend(zoo.resolve("lmm", cfg), cfg.lmm)
    rows += _level_rows("hf in-process", hf.generate, reqs, False, plan)
    del hf
    vcfg = dataclasses.replace(cfg, lmm=dataclasses.replace(cfg.lmm, backend="vllm"))
    vl = VLLMBackend(model_dir(vcfg), vcfg.lmm, "small")
    try:
        rows += _level_rows("vLLM in-process", vl.generate, reqs, True, plan)
    finally:
        vl.close()
    rows += _http_rows(cfg, reqs, plan, python)
    hf_rows = {r["in_flight"]: r for r in rows if r["name"].startswith("hf")}
    for r in rows:
        r["vs_hf"] = r["req_per_s"] / hf_rows[r["in_flight"]]["req_per_s"]
    return stamp({
        "question": "lmm_engines",
        "how": "kbridge bench lmm --engines (in .venv-vllm)",
        "title": "LMM engines on CPU: hf vs vLLM in-process vs vLLM over HTTP (small twins; requests/s ratio to hf)",
        "columns": ["name", "requests", "req_per_s", "gen_tok_per_s", "p50_s", "p95_s", "prefix_cache_hit", "vs_hf"],
        "rows": rows,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "notes": [
            "hf runs the small Qwen2-VL twin, vLLM the small Idefics3 twin (same text tower width 256, 4 layers, "
            "8 heads); the requests (prompts, schemas, seeds, token caps) are identical.",
            "vLLM's CPU engine binds its compute to one core and keeps the other for the caller (2-core machine); "
            "hf uses torch's threads.",
            f"quick={quick}: requests per level (in flight: requests) {plan}, the first N of one workload for "
            "every engine, one warm-up call first. " + ("A check that every engine runs, not a figure to compare." if
            quick else "1 in flight: serial requests, 8 give a rate and a median (p95 = the slowest); 8: two "
            "full waves; 32: one full wave, the most the hf rows (a batch decodes until its longest answer "
            "ends) can afford."),
            "load average (1/5/15 min) before and after: "
            f"{[round(x, 2) for x in load_before]} → {[round(x, 2) for x in os.getloadavg()]}.",
        ],
    })


def _http_rows(cfg, reqs, plan: dict[int, int], python) -> list[dict]:
    import signal
    import subprocess
    import sys

    from kbridge.engine import zoo
    from kbridge.engine.lmm.serving import cpu_serve_command, free_port, wait_healthy
    from kbridge.engine.lmm.vllm_http import HTTPBackend

    model = str(zoo.ensure_tiny("lmm_vllm_cpu", cfg.cache_dir(), cfg.models.lmm_vllm_cpu))
    port = free_port()
    argv, env = cpu_serve_command(model, port=port, dtype=cfg.lmm.dtype, python=python or sys.executable)
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, 900)
        rows = []
        for k, n in plan.items():
            be = HTTPBackend(dataclasses.replace(cfg.lmm, backend="http", url=f"http://127.0.0.1:{port}/v1",
                                                 concurrency=k))
            if not rows:
                asyncio.run(_timed(be.generate, reqs[:2], 2, True))
            gens, lat, wall = asyncio.run(_timed(be.generate, reqs[:n], k, True))
            rows.append(_row("vLLM over HTTP", k, gens, lat, wall))
        return rows
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
