"""The common benchmark harness: timing with warm-up apart, machine and version stamps, one JSON
format, and tables with ratios to a baseline row.

Every question (``e2e``, ``maxsim``, ``runners``, ``lmm``) is one module in this folder with a
``run(...) -> dict`` that returns a *report*::

    {"question": "e2e", "title": "...", "columns": [...], "rows": [{...}, ...],
     "notes": ["..."], "machine": {...}, "versions": {...}, "git_sha": "...", "created": "..."}

Reports live in ``benchmarks/results/<question>.json``; ``kbridge bench report`` renders all of
them into BENCHMARKS.md (see ``report.py``). Times are medians over repeats after warm-up; the
spread is reported beside them; ratios are taken between rows of the same run.
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
    """Add machine, versions, git SHA and time to a report."""
    from kbridge.engine.api import versions

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


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def rich_table(report: dict):
    from rich.table import Table

    t = Table(title=report.get("title", report["question"]), title_justify="left")
    for c in report["columns"]:
        t.add_column(c, justify="left" if c == "name" else "right")
    for r in report["rows"]:
        t.add_row(*(fmt(r.get(c)) for c in report["columns"]))
    return t
