"""Counter samples of the process: RSS, CUDA memory per device, NVML utilisation (where present)."""
from __future__ import annotations

import asyncio
import os
import sys

_nvml = None


def _nvml_handles():
    global _nvml
    if _nvml is None:
        _nvml = []
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVML (CPU machine, no driver, pynvml not installed): no utilisation counter
            _nvml = []
    return _nvml


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
    except (OSError, ValueError, IndexError):
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20)


def process() -> dict[str, dict]:
    out: dict[str, dict] = {"memory MB": {"rss": _rss_mb()}}
    torch = sys.modules.get("torch")  # never imports torch just to sample
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            out[f"cuda:{i} memory MB"] = {"allocated": round(torch.cuda.memory_allocated(i) / 2**20),
                                          "reserved": round(torch.cuda.memory_reserved(i) / 2**20)}
    handles = _nvml_handles()
    if handles:
        import pynvml

        out["gpu utilisation %"] = {f"cuda:{i}": pynvml.nvmlDeviceGetUtilizationRates(h).gpu
                                    for i, h in enumerate(handles)}
    return out


async def sample(tracer, queues: dict, in_flight) -> None:
    """Every ``counters_s``: queue depth per stage, rows in flight, process counters (a task on the
    executor's loop, cancelled with the stream)."""
    while True:
        vals = process()
        vals["queue depth"] = {name: q.qsize() for name, q in queues.items()}
        vals["rows in flight"] = {"rows": in_flight()}
        tracer.counters(vals)
        await asyncio.sleep(tracer.opts.counters_s)
