"""Question ``serve``: per-request latency under load, ``kbridge serve`` vs a one-request-at-a-time
server running the reference's execution pattern (benchmarks/baseline.py, models kept loaded).

An open-loop load generator on 127.0.0.1 sends Poisson arrivals (seeded; a request is sent at
its arrival time whatever the server is doing), mixed image- / text-missing requests cycled from
the demo set, the same sequence to both servers, each server in its own process, one at a time.
The baseline's saturation rate is 1 / its mean service time, measured on warm-up requests;
rates are multiples of it. Per rate: achieved throughput (completed / time from the first
arrival to the last answer), latency p50/p95/p99 end to end (client side), and per stage split by
missing modality (server-reported seconds).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from starlette.requests import Request

from kbridge.benchmarks.harness import fmt, percentile, stamp

STAGES = ["queue", "extract", "write", "render", "candidate_knowledge", "rank"]
COLUMNS = ["name", "rate_x_sat", "offered_rps", "requests", "completed", "rejected", "throughput_rps",
           "p50_s", "p95_s", "p99_s", "p50_image_s", "p50_text_s", "p50_vs_baseline"]


# ---- the baseline server (one request at a time, reference pattern)
def baseline_app(cfg):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from kbridge.benchmarks.baseline import run_reference_pattern
    from kbridge.engine.models import load_generator, load_lmm, load_scorer
    from kbridge.engine.serve.app import decode_image
    from kbridge.engine.types import Sample

    loaded = {"lmm": load_lmm(cfg), "generator": load_generator(cfg), "scorer": load_scorer(cfg)}
    lock = asyncio.Lock()
    work = Path(tempfile.mkdtemp(prefix="kbridge-baseline-serve-"))
    app = FastAPI(title="reference pattern, one request at a time")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/complete")
    async def complete(request: Request):
        b = json.loads(await request.body())
        image = decode_image(base64.b64decode(b["image"]), 1 << 30) if b.get("image") else None
        s = Sample(b["sample_id"], 0, b.get("text"), image, b["missing"])
        t0 = time.time()
        async with lock:  # the reference serves one sample at a time
            t1 = time.time()
            run = await asyncio.to_thread(run_reference_pattern, cfg, [s], work, loaded)
        if run.errors:
            return JSONResponse({"error": run.errors[0]["error"]}, status_code=500)
        timings = {k: {"seconds": round(v, 4)} for k, v in run.stage_seconds.items()}
        timings["queue"] = {"seconds": round(t1 - t0, 4)}
        return {"sample_id": s.sample_id, "best": run.best.get(s.sample_id), "timings": timings}

    return app


def main(argv: list[str]) -> None:
    """``python -m kbridge.benchmarks.serve baseline PROFILE CONFIG PORT``: the baseline server."""
    import uvicorn

    from kbridge.engine.config import build_config
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    _, profile, config, port = argv
    uvicorn.run(baseline_app(build_config(profile, config)), host="127.0.0.1", port=int(port), log_level="warning")


def toml_text(overrides: dict) -> str:
    return "".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items()) for sec, kv in overrides.items())


# ---- load generation
def requests_from_demo(n: int, tag: str) -> list[dict]:
    """``n`` request bodies cycling the demo set's incomplete samples (image- and text-missing mixed)."""
    from kbridge.engine import data as D

    ds = D.open_dataset(None)
    by = [sorted(i for i, m in ds.missing.items() if m == kind) for kind in ("image", "text")]
    idx = [i for pair in zip(*by) for i in pair]  # image, text, image, text, ...
    out = []
    for k in range(n):
        i = idx[k % len(idx)]
        rec, miss = ds.items[i], ds.missing[i]
        body = {"sample_id": f"{tag}:{k}", "missing": miss}
        if miss == "image":
            body["text"] = D.text_of(rec, ds.format)
        else:
            body["image"] = base64.b64encode(D.image_path(ds, rec["file_name"]).read_bytes()).decode()
        out.append(body)
    return out


def arrivals(n: int, rate: float, seed: int, duration_s: float | None = None) -> list[float]:
    """Poisson arrival times (seconds from the first, which is at 0): at most ``n``, none later
    than ``duration_s``."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while len(out) < n and (duration_s is None or t <= duration_s):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def _load(url: str, bodies: list[dict], rate: float, seed: int, timeout: float,
                duration_s: float | None = None) -> tuple[list[dict], float]:
    """Open loop: each request is sent at its arrival time whatever the server is doing; bounded
    by the count of ``bodies`` and by ``duration_s`` (later arrivals are not sent)."""
    import httpx2 as httpx

    at = arrivals(len(bodies), rate, seed, duration_s)
    bodies = bodies[:len(at)]
    recs: list[dict] = []
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(at: float, body: dict) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            a = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/complete", json=body)
                code, data = r.status_code, (r.json() if r.status_code == 200 else {})
            except httpx.HTTPError as e:
                code, data = 0, {"error": str(e)}
            b = time.perf_counter()
            recs.append({"missing": body["missing"], "code": code, "start": a - t0, "end": b - t0,
                         "latency": b - a, "timings": {k: v["seconds"] for k, v in data.get("timings", {}).items()}})

        await asyncio.gather(*(one(a, b) for a, b in zip(at, bodies)))
    return recs, at[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free loopback port, ready when /health says 200."""

    def __init__(self, argv: list[str], ready_s: float = 600):
        import httpx2 as httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.p = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ})
        end = time.time() + ready_s
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.p.poll() is not None or time.time() > end:
                raise RuntimeError(f"server {argv} did not start: {self.p.stderr.read()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(120)
        except subprocess.TimeoutExpired:
            self.p.kill()


def _pcts(xs: list[float]) -> dict:
    return {q: percentile(xs, q) if xs else None for q in (50, 95, 99)}


def _row(name: str, mult: float, rate: float, recs: list[dict], first: float) -> tuple[dict, list[dict]]:
    """One sweep-table row (end to end, client side) and one per-modality row each with every
    stage's server-side p50 / p95 / p99."""
    ok = [r for r in recs if r["code"] == 200]
    lat = [r["latency"] for r in ok]
    span = max((r["end"] for r in ok), default=first) - first
    row = {"name": name, "rate_x_sat": mult, "offered_rps": rate, "requests": len(recs), "completed": len(ok),
           "rejected": sum(r["code"] == 429 for r in recs), "errors": sum(r["code"] not in (200, 429) for r in recs),
           "throughput_rps": len(ok) / span if span > 0 else float("nan"),
           **{f"p{q}_s": v for q, v in _pcts(lat).items()}}
    stages = []
    for kind in ("image", "text"):
        mine = [r for r in ok if r["missing"] == kind]
        e2e = _pcts([r["latency"] for r in mine])
        row[f"p50_{kind}_s"] = e2e[50]
        srow = {"name": name, "rate_x_sat": mult, "missing": kind, "requests": len(mine),
                **{f"p{q}_s": v for q, v in e2e.items()}}
        for st in STAGES:
            ps = _pcts([r["timings"][st] for r in mine if st in r["timings"]])
            srow.update({f"{st}_p{q}_s": v for q, v in ps.items()})
            srow[f"{st}_s"] = " / ".join(fmt(v) for v in ps.values()) if ps[50] is not None else None
        stages.append(srow)
    return row, stages


DEFAULTS = {  # profile → (rate multiples, most requests per rate, seconds of arrivals per rate, candidates,
    #            free-text cap or None: the profile's own)
    "tiny": ((0.5, 1.0, 2.0), 16, 100.0, 2, 32),
    "small": ((1.0,), 4, 300.0, 2, None),
}
"""What ``kbridge bench serve`` runs: on tiny a sweep up to and past the baseline's saturation
(free-text turns capped at 32 tokens, so the sweep fits); on small one fixed-count run at
saturation with the profile's own free-text cap (what it was calibrated with)."""


def run(profile: str = "tiny", quick: bool = False, multipliers: tuple[float, ...] | None = None,
        requests: int | None = None, candidates: int | None = None, free_text_tokens: int | None = None,
        duration_s: float | None = None) -> dict:
    """A sweep of rates (multiples of the baseline's saturation), or one fixed-count run at it
    (``multipliers=(1.0,)``); per rate at most ``requests`` arrivals and none after
    ``duration_s``. ``candidates`` / ``free_text_tokens`` apply to both servers."""
    d_mult, d_n, d_dur, d_cands, d_free = DEFAULTS.get(profile, DEFAULTS["small"])
    multipliers = multipliers if multipliers is not None else d_mult
    n = requests or (4 if quick else d_n)
    duration_s = duration_s or d_dur
    candidates, free_text_tokens = candidates or d_cands, free_text_tokens or d_free
    overrides = {"generation": {"candidates": candidates}}
    if free_text_tokens:
        overrides["lmm"] = {"free_text_tokens": free_text_tokens}
    cfg_file = Path(tempfile.mkdtemp(prefix="kbridge-bench-serve-")) / "bench.toml"
    cfg_file.write_text(toml_text(overrides))
    # first calls (lazy initialisation: every model's and grammar's first use) are not timed; then
    # one image- and one text-missing request alone: their mean is the service time of the
    # half-and-half mix (the request's own latency, as in the rate runs: no client set-up)
    warm, timed = requests_from_demo(2, "warm"), requests_from_demo(2, "calib")
    t_start = time.time()
    rows, stage_rows, calib, alone, records = [], [], {}, {}, []
    servers = {"baseline": ["-m", "kbridge.benchmarks.serve", "baseline", profile, str(cfg_file), "{port}"],
               "kbridge": ["-m", "kbridge.cli", "serve", "--profile", profile, "--config", str(cfg_file), "--port", "{port}",
                           "--max-queue", "100000", "--request-timeout-s", "3600"]}
    for name in ("baseline", "kbridge"):
        srv = Server(servers[name])
        try:
            for b in warm:
                asyncio.run(_load(srv.url, [b], 1e6, 0, 3600))
            times = {}
            for b in timed:
                (rec,), _ = asyncio.run(_load(srv.url, [b], 1e6, 0, 3600))
                if rec["code"] != 200:
                    raise RuntimeError(f"{name}: a calibration request failed ({rec['code']}): {srv.url}")
                times[b["missing"]] = rec["latency"]
            alone[name] = times
            calib[name] = statistics.mean(times.values())
            print(f"{name}: service time {calib[name]:.2f} s ({times})", file=sys.stderr, flush=True)
            sat = 1.0 / calib["baseline"]
            for k, mult in enumerate(multipliers):
                rate = sat * mult
                bodies = requests_from_demo(n, f"bench{k}")
                recs, first = asyncio.run(_load(srv.url, bodies, rate, seed=1000 + k, timeout=3600,
                                                duration_s=duration_s))
                row, st = _row(name, mult, rate, recs, first)
                records += [{"name": name, "rate_x_sat": mult, **r} for r in recs]
                print(f"{name} {mult}x: p50 {row['p50_s']:.2f} s, {row['completed']}/{len(recs)} done", file=sys.stderr,
                      flush=True)
                rows.append(row)
                stage_rows += st
        finally:
            srv.stop()
    base = {r["rate_x_sat"]: r["p50_s"] for r in rows if r["name"] == "baseline"}
    for r in rows:
        r["p50_vs_baseline"] = base[r["rate_x_sat"]] / r["p50_s"] if r["p50_s"] and r["p50_s"] == r["p50_s"] else None
    at_sat = [r for r in rows if r["name"] == "kbridge" and r["rate_x_sat"] == 1.0]
    fmt_alone = lambda t: " / ".join(f"{t[k]:.2f}" for k in ("image", "text"))  # noqa: E731
    notes = [f"service time alone (warm, one request at a time), image- / text-missing: baseline {fmt_alone(alone['baseline'])} s "
             f"(mean {calib['baseline']:.2f} s: saturation {1 / calib['baseline']:.4f} req/s), kbridge serve "
             f"{fmt_alone(alone['kbridge'])} s",
             f"up to {n} requests per rate (Poisson, seeded; none sent after {duration_s:.0f} s), image- and "
             f"text-missing alternating, from the demo set; total {time.time() - t_start:.0f} s",
             f"settings for both servers: profile {profile}" + "".join(
                 f", {sec}.{k} = {v}" for sec, kv in overrides.items() for k, v in kv.items())]
    if at_sat:
        notes.append(f"at the baseline's saturation rate kbridge's p50 is {at_sat[0]['p50_vs_baseline']:.2f}x lower "
                     f"(goal: >= 3x)")
    question = "serve" if profile == "tiny" else f"serve_{profile}"
    default = (multipliers, n, duration_s, candidates, free_text_tokens) == (d_mult, d_n, d_dur, d_cands, d_free)
    return stamp({
        "question": question,
        "title": f"Serving: latency under Poisson load, kbridge serve vs one-at-a-time reference pattern ({profile})",
        "how": f"kbridge bench serve --profile {profile}" + ("" if default else (
            (" --quick" if quick else "") + (f" --requests {n}" if requests else "")
            + f" --candidates {candidates}" + (f" --free-text-tokens {free_text_tokens}" if free_text_tokens else "")
            + f" --rates {','.join(map(str, multipliers))} --duration {duration_s:g}")),
        "profile": profile, "columns": COLUMNS, "rows": rows, "plot": f"benchmarks/results/{question}_latency.png",
        "plot_kind": "latency_throughput",
        "tables": [{"title": "By missing modality: end to end (client side) p50, p95, p99 s; per stage (server "
                             "side) p50 / p95 / p99 s",
                    "columns": ["name", "rate_x_sat", "missing", "requests", "p50_s", "p95_s", "p99_s",
                                *[f"{s}_s" for s in STAGES]], "rows": stage_rows}],
        "records": records,
        "notes": notes})


def latency_plot(report: dict, path: Path) -> Path | None:
    """p50 and p95 latency against achieved throughput, one line per server (matplotlib; skipped
    when it is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in (("baseline", "o-"), ("kbridge", "s-")):
        rs = sorted((r for r in report["rows"] if r["name"] == name), key=lambda r: r["offered_rps"])
        ax.plot([r["throughput_rps"] for r in rs], [r["p50_s"] for r in rs], style, label=f"{name} p50")
        ax.plot([r["throughput_rps"] for r in rs], [r["p95_s"] for r in rs], style, alpha=0.4, label=f"{name} p95")
    ax.set_xlabel("achieved throughput, requests/s")
    ax.set_ylabel("latency, s")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(report.get("title", "serve")[:80], fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
