"""The run's sink, shared by every executor (local streaming, Ray): each finished row becomes a
results line (images first) or an errors line, and the run's totals are kept as rows arrive.

Whatever executes the stages, the run directory is written only here, by one thread of the
driver, so resume, ``--export-completed`` and the output layout do not depend on the executor.
"""
from __future__ import annotations

import logging
import statistics

from kbridge.engine.rows import Row

log = logging.getLogger(__name__)


class ResultSink:
    """``sink(row)``: write one finished row into ``store`` and account it in ``report``."""

    def __init__(self, store, report, t_start: float, on_sample=None, verbose: bool = False, trace=None):
        self.store, self.report, self.t_start, self.trace = store, report, t_start, trace
        self.on_sample, self.verbose = on_sample, verbose
        self.lmm = {"lmm_calls": 0, "cache_hits": 0, "prompt_tokens": 0, "generated_tokens": 0}
        self.latencies: list[float] = []

    def account(self, row: Row) -> None:
        for r in row.lmm:
            if r.cached:
                self.lmm["cache_hits"] += 1
            else:
                self.lmm["lmm_calls"] += 1
                self.lmm["prompt_tokens"] += r.prompt_tokens
                self.lmm["generated_tokens"] += r.generated_tokens
                if r.engine:  # the engine's prefix-cache hits (vLLM), in prompt tokens
                    self.lmm["prefix_cached_tokens"] = (self.lmm.get("prefix_cached_tokens", 0)
                                                        + int(r.engine.get("cached_prompt_tokens", 0)))

    def __call__(self, row: Row) -> None:
        """A result line, or the row's error (the traceback only with -v)."""
        self.account(row)
        if row.error is not None:
            self.error(row.sample_id, row.error.message, row.error.stage, row.error.detail if self.verbose else "")
            if self.trace is not None:
                self.trace.row(row)
            return
        line = self.store.write_result(row, self.t_start)
        if self.trace is not None:  # the sample span ends where its results line says it was written
            self.trace.row(row, self.t_start + line["timings"]["sample"]["end"])
        self.report.completed += 1
        self.report.candidates += len(row.candidates)
        self.latencies.append(line["timings"]["sample"]["seconds"])
        if self.on_sample:
            self.on_sample(row.sample_id, "done")

    def error(self, sid: str, msg: str, stage: str, detail: str = "") -> None:
        log.error("%s: %s", sid, msg)
        self.store.write_error(sid, msg, stage, detail)
        self.report.errors.append({"sample_id": sid, "stage": stage, "error": msg})
        if self.on_sample:
            self.on_sample(sid, "error")

    def close(self, busy: dict) -> None:
        """The run's totals into the report: busy seconds per stage, LMM work, latency p50/p95."""
        self.report.stage_seconds = {k: round(v, 3) for k, v in busy.items()}
        self.report.lmm = self.lmm
        if self.latencies:
            p50, p95 = p50_p95(self.latencies)
            self.report.latency = {"p50_s": round(p50, 3), "p95_s": round(p95, 3)}


def p50_p95(xs: list[float]) -> tuple[float, float]:
    """The median and 95th percentile, linearly interpolated between order statistics (numpy's default)."""
    if len(xs) == 1:
        return xs[0], xs[0]
    cuts = statistics.quantiles(xs, n=20, method="inclusive")
    return cuts[9], cuts[18]
