"""``--trace-kernels N..M``: torch.profiler activity (CPU ops on every thread, CUDA kernels and
memory where CUDA exists) while the samples admitted N-th to M-th are in the pipeline, merged
into the run's trace on its clock. Full kernel tracing of a whole dataset is far too heavy (MBs
per sample, and the profiler slows every op); a window of a few samples is what it is for.

Clock: an empty ``record_function`` marker is taken between two ``time.time()`` reads at the
window's start; the profiler's timestamps are shifted so the marker's middle lands on theirs. The
error bound, half the reads' distance (microseconds; more if the thread was preempted), is in the
``kbridge_kernels`` metadata event. Its processes are renumbered into the run's range (pid + 100) and prefixed
``torch.profiler``.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time

log = logging.getLogger(__name__)
MARK = "kbridge.clock"


class KernelWindow:
    def __init__(self, tracer, first: int, last: int):
        self.tracer, self.first, self.last = tracer, first, last
        self.n = 0
        self.inside: set[str] = set()
        self.prof = None
        self.mark = 0.0
        self.error = 0.0
        """Half the time the marker took to take (a preempted thread widens it): the clock's bound."""
        self.done = False
        self.lock = threading.Lock()

    def admitted(self, row) -> None:
        with self.lock:
            i, self.n = self.n, self.n + 1
            if self.first <= i <= self.last:
                self.inside.add(row.sample_id)
            if i == self.first and self.prof is None and not self.done:
                self._start()

    def finished(self, row) -> None:
        with self.lock:
            self.inside.discard(row.sample_id)
            if self.prof is not None and self.n > self.last and not self.inside:
                self._stop()

    def stop(self) -> None:
        with self.lock:
            if self.prof is not None:
                self._stop()

    def _start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        kw = {}
        try:
            from torch._C._profiler import _ExperimentalConfig

            kw["experimental_config"] = _ExperimentalConfig(profile_all_threads=True)
        except (ImportError, TypeError):  # older torch: the starting thread's ops only
            pass
        self.prof = profile(activities=acts, record_shapes=True, profile_memory=True, **kw)
        self.prof.start()
        a = time.time()
        with torch.profiler.record_function(MARK):
            pass
        b = time.time()
        self.mark, self.error = (a + b) / 2, (b - a) / 2

    def _stop(self) -> None:
        prof, self.prof, self.done = self.prof, None, True
        prof.stop()
        fd, path = tempfile.mkstemp(suffix=".json", prefix="kbridge-kernels-")
        os.close(fd)
        try:
            prof.export_chrome_trace(path)
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        finally:
            os.unlink(path)
        events = data.get("traceEvents", data) if isinstance(data, dict) else data
        merged = shift(events, self.tracer.ts(self.mark), self.tracer.base + 100)
        if merged:
            merged.insert(0, {"ph": "M", "name": "kbridge_kernels", "pid": self.tracer.base + 100, "tid": 0,
                              "args": {"window": [self.first, self.last], "clock_error_us": round(self.error * 1e6)}})
        self.tracer.merge(merged)


def shift(events: list[dict], mark_us: int, pid0: int) -> list[dict]:
    """The profiler's events moved onto the trace's clock (the marker at ``mark_us``), their
    processes renumbered from ``pid0``, sorted by time (monotonic per track)."""
    marker = next((e for e in events if e.get("name") == MARK and isinstance(e.get("ts"), (int, float))), None)
    if marker is None:
        log.warning("--trace-kernels: the profiler recorded no clock marker; its events are not merged")
        return []
    off = mark_us - (marker["ts"] + marker.get("dur", 0) / 2)  # the marker's middle at the middle of its reads
    pids: dict = {}
    out = []
    for e in events:
        if not isinstance(e, dict) or "ph" not in e:
            continue
        e = dict(e)
        p = e.get("pid", 0)
        if p not in pids:
            pids[p] = pid0 + len(pids)
            out.append({"ph": "M", "name": "process_name", "pid": pids[p], "tid": 0,
                        "args": {"name": f"torch.profiler {p}"}})
        e["pid"] = pids[p]
        if isinstance(e.get("ts"), (int, float)):
            e["ts"] = round(float(e["ts"]) + off, 3)
        if e["ph"] == "M" and e.get("name") == "process_name":
            e["args"] = {"name": f"torch.profiler {e.get('args', {}).get('name', p)}"}
        out.append(e)
    meta = [e for e in out if "ts" not in e or e["ph"] == "M"]
    timed = sorted((e for e in out if "ts" in e and e["ph"] != "M"), key=lambda e: (e["ts"], -float(e.get("dur", 0) or 0)))
    return meta + timed
