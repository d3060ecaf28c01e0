"""``kbridge bench trace``: what ``--trace`` costs, measured in one process on the same samples.

Rows: the same run without and with ``--trace`` (no kernels), alternating order per repeat after
an untimed warm-up of each, fresh run directories (no cache hits); medians of wall time and of
the process's CPU time, and the overheads in percent. Counted figures beside them (exact on any machine): trace events and bytes
per sample, and the trace's validation problems (0).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

COLUMNS = ["name", "samples", "repeats", "wall_s_median", "wall_s_min", "overhead_pct", "cpu_s_median",
           "cpu_overhead_pct", "events_per_sample", "bytes_per_sample", "trace_problems"]


def _one(eng, data: Path, out: Path, trace: bool) -> tuple[float, float, dict]:
    from kbridge.engine.trace import TraceOptions
    from kbridge.engine.trace.check import problems
    from kbridge.engine.trace.io import read_events

    t0, c0 = time.perf_counter(), time.process_time()
    rep = eng.run(data=data, fmt="coco", missing=data / "missing.json", out=out,
                  trace=TraceOptions(out / "trace.json.gz") if trace else None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = {"completed": rep.completed}
    if trace:
        events = list(read_events(out / "trace.json.gz"))
        info.update(events=len(events), bytes=(out / "trace.json.gz").stat().st_size, problems=len(problems(events)))
    return wall, cpu, info


def run(profile: str = "tiny", samples: int = 8, repeats: int = 3) -> dict:
    from kbridge.benchmarks.e2e import bench_dataset
    from kbridge.benchmarks.harness import stamp
    from kbridge.engine.api import Engine

    eng = Engine(profile=profile)
    eng.models(need_diffusion=True)
    walls: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="kbridge-bench-trace-") as tmp:
        tmp = Path(tmp)
        data = bench_dataset(tmp / "data", samples)
        for traced in (False, True):  # warm-up, untimed
            _one(eng, data, tmp / f"warm-{traced}", traced)
        for k in range(repeats):
            for traced in ((False, True) if k % 2 == 0 else (True, False)):
                wall, cpu, got = _one(eng, data, tmp / f"r{k}-{traced}", traced)
                walls[traced].append(wall)
                cpus[traced].append(cpu)
                if traced:
                    info = got
    base, cbase = statistics.median(walls[False]), statistics.median(cpus[False])
    rows = []
    for traced in (False, True):
        med = statistics.median(walls[traced])
        row = {"name": "--trace" if traced else "no trace", "kind": "engine" if traced else "baseline",
               "samples": samples, "repeats": repeats, "wall_s_median": round(med, 3),
               "wall_s_min": round(min(walls[traced]), 3), "overhead_pct": round(100 * (med - base) / base, 2),
               "cpu_s_median": round(statistics.median(cpus[traced]), 3),
               "cpu_overhead_pct": round(100 * (statistics.median(cpus[traced]) - cbase) / cbase, 2)}
        if traced:
            row.update(events_per_sample=round(info["events"] / samples, 1),
                       bytes_per_sample=round(info["bytes"] / samples), trace_problems=info["problems"])
        rows.append(row)
    return stamp({"question": "trace" if profile == "tiny" else f"trace_{profile}", "title": f"Tracing overhead: kbridge run with and without --trace ({profile})",
                  "how": f"kbridge bench trace --profile {profile} --samples {samples} --repeats {repeats}",
                  "columns": COLUMNS, "rows": rows,
                  "notes": ["cpu_s: this process's CPU time (user + system) for the run, steadier than wall time "
                            "on a shared machine",
                            "overhead_pct: median wall time with --trace over without, same process, same samples, "
                            "alternating order; on a shared machine a swing of a few percent either way is noise — "
                            "the counted figures (events, bytes per sample) are exact",
                            "the trace holds counters every second as well, so bytes per sample fall as runs get "
                            "longer per sample; --trace-every N thins the per-sample spans for 50k-sample runs"]})
