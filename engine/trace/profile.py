"""``kbridge profile RUN_DIR``: where a traced run's time went, and what to change.

Everything is computed from the trace (engine/trace): the device tracks give each worker's busy
share, idle gaps and batch sizes; the sample tracks give each stage's throughput, queue waits and
share of the samples' critical paths (a sample's span is its critical path: admitted → written,
every moment of it either a stage's work or a wait for one), split by sample kind. The verdict
names the stage with the largest share of the critical paths and the knob that moves it, with the
evidence (its share, its wait vs work, its workers' busy share).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from kbridge.engine.errors import KbridgeError
from kbridge.engine.trace import DEVICES, LMM, SAMPLES
from kbridge.engine.trace.io import read_events

KNOBS = {
    "render": "add a render device (`[generation] devices`) or lower `generation.steps` / `--candidates`",
    "extract": "give the LMM more throughput: raise `run.batch_size`, serve it with more replicas "
               "(`kbridge lmm serve`), or lower `knowledge` max tokens",
    "write": "give the LMM more throughput: raise `run.batch_size`, serve it with more replicas, or use "
             "`--fidelity fast`",
    "candidate_knowledge": "give the LMM more throughput (raise `run.batch_size`, more replicas) or fewer "
                           "`--candidates`",
    "retrieve": "move the scorer to a GPU (`rank.device`) or raise `run.dense_rows`",
    "rank": "move the scorer to a GPU (`rank.device`) or raise `run.dense_rows`",
    "load": "reads dominate: raise `run.rows_in_flight` or put the dataset on faster storage",
    "sink": "the result writer (PNG + fsync per sample) dominates: a faster disk for --out",
}
"""Stage → the configuration knob that moves it (``kbridge plan`` shows room for another replica)."""


class ProfileError(KbridgeError):
    """No trace to profile (run with --trace), or it holds no finished sample."""


def _pct(xs: list[float], q: int) -> float:
    """The q-th percentile (q in 1..99) interpolated like numpy's default; 0.0 for no values."""
    if len(xs) < 2:
        return round(xs[0], 4) if xs else 0.0
    return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 4)


def _union(iv: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _worker(name: str) -> str:
    """A lane's track name → its worker ("lmm #3" → "lmm")."""
    base, sep, n = name.rpartition(" #")
    return base if sep and n.isdigit() else name


def load(path: str | Path, run: int | None = None) -> dict:
    """The events of one run of the trace (default: the last), grouped by track."""
    events = list(read_events(path))
    runs = [e["args"].get("run", 1) for e in events if e.get("ph") == "M" and e.get("name") == "kbridge"]
    if not runs:
        raise ProfileError(f"{path}: not a kbridge trace (no header event)")
    run = run or max(runs)
    base = 10 * (run - 1)
    names: dict[tuple[int, int], str] = {}
    spans: dict[int, list[dict]] = defaultdict(list)
    counters: list[dict] = []
    for e in events:
        pid = e.get("pid", -1) - base
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(pid, e.get("tid"))] = e["args"]["name"]
        elif e.get("ph") == "X" and pid in (DEVICES, SAMPLES, LMM):
            spans[pid].append(e)
        elif e.get("ph") == "C" and pid == DEVICES:
            counters.append(e)
    return {"run": run, "runs": max(runs), "names": names, "spans": spans, "counters": counters}


def _samples(tr: dict) -> list[dict]:
    """Per sample: its span and the children inside it, from the samples tracks."""
    by_tid: dict[int, list[dict]] = defaultdict(list)
    for e in tr["spans"][SAMPLES]:
        by_tid[e["tid"]].append(e)
    out = []
    for evs in by_tid.values():
        cur = None
        for e in evs:  # file order: a sample span, then its children
            if e["name"] == "sample":
                cur = {"span": e, "parts": []}
                out.append(cur)
            elif cur is not None:
                cur["parts"].append(e)
    return out


def analyse(tr: dict) -> dict:
    samples = _samples(tr)
    if not samples:
        raise ProfileError("the trace holds no finished sample")
    t0 = min(s["span"]["ts"] for s in samples)
    t1 = max(s["span"]["ts"] + s["span"]["dur"] for s in samples)
    window = max(1, t1 - t0)
    # ---- devices / workers
    work: dict[str, list[dict]] = defaultdict(list)
    for e in tr["spans"][DEVICES]:
        if e.get("cat") != "detail":  # a call's UNet / VAE spans are inside it, not calls of their own
            work[_worker(tr["names"].get((DEVICES, e["tid"]), str(e["tid"])))].append(e)
    devices = {}
    for w, evs in sorted(work.items()):
        u = _union([(e["ts"], e["ts"] + e["dur"]) for e in evs])
        busy = sum(b - a for a, b in u)
        gaps = [u[i + 1][0] - u[i][1] for i in range(len(u) - 1)]
        sizes: dict[int, int] = defaultdict(int)
        for e in evs:
            sizes[int((e.get("args") or {}).get("n", 1))] += 1
        n = sum(sizes.values())
        devices[w] = {"stages": sorted({e["name"] for e in evs}), "calls": n,
                      "busy_share": round(busy / window, 4), "busy_s": round(busy / 1e6, 4),
                      "idle_gaps": {"count": len(gaps), "total_s": round(sum(gaps) / 1e6, 4),
                                    "max_s": round(max(gaps, default=0) / 1e6, 4),
                                    "p50_s": round(_pct(gaps, 50) / 1e6, 4)},
                      "batch": {"mean": round(sum(k * v for k, v in sizes.items()) / max(1, n), 3),
                                "sizes": {str(k): v for k, v in sorted(sizes.items())}}}
    # ---- stages, critical paths, kinds
    per_stage: dict[str, dict] = defaultdict(lambda: {"samples": 0, "work": [], "wait": []})
    share: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total: dict[str, float] = defaultdict(float)
    for s in samples:
        kind = str((s["span"].get("args") or {}).get("missing"))
        total[kind] += s["span"]["dur"]
        total["all"] += s["span"]["dur"]
        for p in s["parts"]:
            name = p["name"]
            stage = name[5:] if name.startswith("wait ") else name
            st = per_stage[stage]
            if name.startswith("wait "):
                st["wait"].append(p["dur"] / 1e6)
            else:
                st["samples"] += 1
                st["work"].append(p["dur"] / 1e6)
            for k in (kind, "all"):
                share[k][stage] += p["dur"]
    stages = {}
    for name, st in per_stage.items():
        stages[name] = {"samples": st["samples"], "throughput_per_s": round(st["samples"] / (window / 1e6), 3),
                        "work_p50_s": _pct(st["work"], 50), "work_p95_s": _pct(st["work"], 95),
                        "wait_p50_s": _pct(st["wait"] + [0.0] * (st["samples"] - len(st["wait"])), 50),
                        "wait_p95_s": _pct(st["wait"] + [0.0] * (st["samples"] - len(st["wait"])), 95),
                        "wait_s": round(sum(st["wait"]), 4), "work_s": round(sum(st["work"]), 4),
                        "critical_share": round(share["all"][name] / max(1, total["all"]), 4)}
    kinds = {k: {st: round(v / max(1, total[k]), 4) for st, v in sorted(share[k].items(), key=lambda kv: -kv[1])}
             for k in share if k != "all"}
    lat = sorted(s["span"]["dur"] / 1e6 for s in samples)
    out = {"run": tr["run"], "runs": tr["runs"], "samples": len(samples), "window_s": round(window / 1e6, 4),
           "latency": {"p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95)},
           "devices": devices, "stages": dict(sorted(stages.items(), key=lambda kv: -kv[1]["critical_share"])),
           "kinds": kinds, "lmm_requests": len(tr["spans"][LMM])}
    out["verdict"] = verdict(out)
    return out


def verdict(p: dict) -> list[str]:
    """One or two lines: the bottleneck stage, the knob, the evidence."""
    if not p["stages"]:
        return ["no stage spans in the trace"]
    name, st = next(iter(p["stages"].items()))
    on = {w: d for w, d in p["devices"].items() if name in d["stages"]}
    others = {w: d for w, d in p["devices"].items() if name not in d["stages"] and w != "io"}
    busy = ", ".join(f"{w} busy {d['busy_share']:.0%}" for w, d in on.items()) or "no device span"
    idle = min(others.items(), key=lambda kv: kv[1]["busy_share"]) if others else None
    what = "waiting for it" if st["wait_s"] > st["work_s"] else "its own work"
    line1 = (f"bottleneck: {name} — {st['critical_share']:.0%} of the samples' critical paths "
             f"(per sample: work p50 {st['work_p50_s']:.3f} s, queue wait p50 {st['wait_p50_s']:.3f} s: mostly "
             f"{what}); {busy}"
             + (f"; {idle[0]} busy only {idle[1]['busy_share']:.0%}" if idle else ""))
    line2 = f"knob: {KNOBS.get(name, 'the stage ' + name)}"
    if name == "render":
        line2 += "; `kbridge plan` shows where another render replica fits"
    return [line1, line2]


def profile(run_dir: str | Path, trace: str | Path | None = None, run: int | None = None) -> dict:
    """The profile of ``run_dir``'s trace (default ``RUN_DIR/trace.json.gz``)."""
    path = Path(trace) if trace else Path(run_dir) / "trace.json.gz"
    if not path.exists():
        raise ProfileError(f"{path}: no trace (run with `kbridge run --trace`)")
    p = analyse(load(path, run))
    p["trace"] = str(path)
    return p
