"""The common benchmark harness: timing with warm-up apart, machine and version stamps, one JSON
format, and tables with ratios to a baseline row.

Every question (``e2e``, ``maxsim``, ``runners``, ``lmm``) is one module in this folder with a
``run(...) -> dict`` that returns a *report*::

    {"question": "e2e", "title": "...", "columns": [...], "rows": [{...}, ...],
     "notes": ["..."], "machine": {...}, "versions": {...}, "git_sha": "...", "created": "..."}

Reports live in ``benchmarks/results/<question>.json``; ``kbridge bench report`` renders all of
them into BENCHMARKS.md (see ``report.py``). Times are medians over repeats after warm-up; the
spread is reported beside them; ratios are taken between rows of the same run.

Load: every row carries a ``machine_load`` record (``row_load``): the machine's load at its start and end
and whether it was ``loaded`` by the rule of ``is_loaded``. A loaded row, or one with no record
(everything measured before the record existed), takes part in no ratio and is left out of
BENCHMARKS.md unless ``--allow-loaded`` (and then it is marked loaded wherever it appears).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Stats:
    median: float
    p95: float
    mean: float
    std: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(xs: list[float]) -> Stats:
    return Stats(statistics.median(xs), percentile(xs, 95), statistics.fmean(xs),
                 statistics.pstdev(xs) if len(xs) > 1 else 0.0, len(xs))


def time_it(fn: Callable[[], object], warmup: int = 1, repeat: int = 5, min_seconds: float = 0.0) -> Stats:
    """Run ``fn`` ``warmup`` times untimed, then at least ``repeat`` times (and at least
    ``min_seconds`` in all) timed with perf_counter."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < repeat or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


LOAD_KEY = "machine_load"
"""The row field holding its load record (``row_load``), or a list of them for a row that
aggregates repetitions."""
LOADED_PER_CORE = 0.5
"""A row is ``loaded`` when, at its start or its end, either the 1-minute load average minus the
benchmark's own threads, or the CPU that other processes used in the probe window (in cores),
exceeds ``LOADED_PER_CORE`` x the machine's cores (on 2 cores: more than 1.0 core's worth)."""
BUSY_SHARE = 0.1
"""A process counts as busy when it used more than this share of one core in the probe window."""

_started: dict | None = None
"""The probe taken when a ``kbridge bench`` command started (``begin``): the start of the load
record of rows that do not record their own."""


def load_probe(window: float = 0.25) -> dict:
    """The machine's load now: 1-minute load average, and the other processes (not this one, not
    its children) that used CPU during a ``window``-second probe: how many were busy, and how many
    cores they used together."""
    import psutil

    me = psutil.Process()
    mine = {me.pid, *(c.pid for c in me.children(recursive=True))}

    def times() -> dict[int, float]:
        out = {}
        for p in psutil.process_iter(["pid", "cpu_times"]):
            t = p.info.get("cpu_times")
            if p.info["pid"] not in mine and t is not None:
                out[p.info["pid"]] = t.user + t.system
        return out

    a, t0 = times(), time.perf_counter()
    time.sleep(window)
    b, dt = times(), time.perf_counter() - t0
    used = [(b[pid] - a[pid]) / dt for pid in b.keys() & a.keys()]
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load1": round(os.getloadavg()[0], 2),
            "busy_other": sum(u > BUSY_SHARE for u in used), "other_cores": round(sum(u for u in used if u > 0), 2)}


def own_threads() -> int:
    import torch

    return torch.get_num_threads()


def is_loaded(load: dict | None) -> bool:
    """The rule of ``LOADED_PER_CORE``; a row with no load record counts as loaded (unknown)."""
    if not load or "start" not in load or "end" not in load:
        return True
    limit = LOADED_PER_CORE * load["cores"]
    return any(p["load1"] - load["own_threads"] > limit or p["other_cores"] > limit
               for p in (load["start"], load["end"]))


def row_load(start: dict, end: dict, threads: int | None = None) -> dict:
    rec = {"start": start, "end": end, "own_threads": own_threads() if threads is None else threads,
           "cores": os.cpu_count() or 1}
    return {**rec, "loaded": is_loaded(rec)}


def loaded(row: dict) -> bool:
    """Whether a row is loaded (or unknown); a row aggregating repetitions is loaded if any is."""
    load = row.get(LOAD_KEY)
    if isinstance(load, list):
        return not load or any(is_loaded(x) for x in load)
    return is_loaded(load)


def measured(fn: Callable[[], dict]) -> dict:
    """Run ``fn`` (which returns one row) between two load probes; the row gets its ``load``."""
    start = load_probe()
    row = fn()
    return {**row, LOAD_KEY: row_load(start, load_probe())}


def begin() -> None:
    """Record the load at the start of a ``kbridge bench`` command (see ``stamp``)."""
    global _started
    _started = load_probe()


def ratio(a: dict, b: dict, key: str, allow_loaded: bool = False) -> float | None:
    """``a[key] / b[key]``, or None when either row is loaded (unless ``allow_loaded``)."""
    if not allow_loaded and (loaded(a) or loaded(b)):
        return None
    return a[key] / b[key] if b.get(key) else None


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_vector": cpu_vector(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "gpu": gpu}


VECTOR_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8")
"""The CPU vector extensions that decide how much compiled CPU runners gain (onnxruntime vs eager
was 1.90x on one machine and 1.06x on an AVX2-only one of the same kind)."""


def cpu_vector(cpuinfo: str | None = None) -> str:
    """The vector extensions of ``/proc/cpuinfo`` among VECTOR_FLAGS, space-separated ("" if none
    or unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return " ".join(f for f in VECTOR_FLAGS if f in flags)


def stamp(report: dict) -> dict:
    """Add machine, versions, git SHA and time to a report. Rows (of the main table and the extra
    tables) without their own load record get one spanning the whole command: from ``begin`` (or
    now, if the command did not call it) to now."""
    from kbridge.engine.api import versions

    end = load_probe()
    whole = row_load(_started or end, end)
    fill = lambda rows: [r if LOAD_KEY in r else {**r, LOAD_KEY: whole} for r in rows]  # noqa: E731
    report = {**report, "rows": fill(report.get("rows", [])),
              "tables": [{**t, "rows": fill(t.get("rows", []))} for t in report.get("tables", [])]}
    if not report["tables"]:
        report.pop("tables")
    return {**report, "machine": machine(), "versions": versions(), "git_sha": git_sha(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def save(report: dict, path: Path | None = None) -> Path:
    path = Path(path) if path else RESULTS_DIR / f"{report['question']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return path


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01 or v == 0:
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return f"{v:.2e}"
    return "–" if v is None else str(v)


def shown_name(row: dict) -> str | None:
    """A row's name as tables print it: marked when it ran loaded or has no load record."""
    name = row.get("name")
    if name is None or not loaded(row):
        return name
    return f"{name} [loaded]" if row.get(LOAD_KEY) else f"{name} [load unknown]"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(shown_name(r) if c == "name" else r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def rich_table(report: dict):
    from rich.markup import escape  # "[loaded]" is text, not a style tag
    from rich.table import Table

    t = Table(title=report.get("title", report["question"]), title_justify="left")
    for c in report["columns"]:
        t.add_column(c, justify="left" if c == "name" else "right")
    for r in report["rows"]:
        t.add_row(*(escape(fmt(shown_name(r) if c == "name" else r.get(c))) for c in report["columns"]))
    return t
