"""The Python API: ``Engine`` loads models once and runs datasets; ``complete`` is one call.

    from kbridge.engine import Engine, complete
    report = complete(out="runs/demo")                     # tiny models, bundled demo set
    eng = Engine(profile="tiny", overrides={"generation": {"candidates": 3}})
    report = eng.run(data="path/to/coco", missing="missing.json", out="runs/coco", limit=100)
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kbridge.engine import data as D
from kbridge.engine.config import PipelineConfig, build_config
from kbridge.engine.lmm import LMMClient, RequestLog
from kbridge.engine.models import load_models, load_retriever
from kbridge.engine.scheduler import Models, Scheduler
from kbridge.engine.store import RunStore, export_completed
from kbridge.engine.types import SampleError, SampleResult

log = logging.getLogger("kbridge.engine")


@dataclass
class RunReport:
    out: Path
    incomplete: int
    """Incomplete samples in the selection (after --limit)."""
    completed: int
    """Samples completed by this call."""
    skipped: int
    """Samples already finished by an earlier run into the same directory."""
    errors: list[dict] = field(default_factory=list)
    candidates: int = 0
    stage_seconds: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    lmm: dict = field(default_factory=dict)
    counts_by_missing: dict = field(default_factory=dict)
    exported: dict | None = None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("kbridge", "torch", "transformers", "diffusers", "xgrammar"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "source" if pkg == "kbridge" else None
    return out


def _sha(path: Path | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else None


class Engine:
    def __init__(self, cfg: PipelineConfig | None = None, profile: str = "tiny",
                 config_file: str | None = None, overrides: dict | None = None):
        self.cfg = cfg or build_config(profile, config_file, overrides)
        self._models: Models | None = None

    def models(self, need_diffusion: bool = True) -> Models:
        if self._models is None:
            self._models = load_models(self.cfg, need_diffusion)
        elif need_diffusion and self._models.diffusion is None:
            # only the generator is missing: the LMM and scorer stay as loaded
            from kbridge.engine.models import load_generator

            self._models.diffusion = load_generator(self.cfg)
        return self._models

    def run(self, data: str | Path | None = None, fmt: str | None = None, missing: str | Path | None = None,
            out: str | Path = "kbridge-out", limit: int | None = None,
            export: str | Path | None = None, on_start: Callable[[int], None] | None = None,
            on_sample: Callable[[str, str], None] | None = None) -> RunReport:
        """Complete every incomplete sample of a dataset (the bundled demo set when ``data`` is None).

        ``on_start(n)`` gets the number of samples left to do; ``on_sample(sample_id, status)`` is
        called as each finishes ("done" / "error").
        Raises DataError for an unreadable dataset and RunConfigMismatch for a reused ``out``.
        """
        import torch

        cfg = self.cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if data is None and cfg.run.domain == "medical":  # the bundled chest-X-ray demo set
            from kbridge.engine.medical import demo_paths

            data, demo_fmt, demo_missing = demo_paths()
            fmt, missing = fmt or demo_fmt, missing or demo_missing
        elif cfg.run.domain == "medical":
            fmt = fmt or "iuxray"  # report datasets use the impression + findings text rule
        ds = D.open_dataset(data, fmt, missing)
        missing_path = missing or (D.DEMO_DIR / "missing-mixed-0.7.json" if data is None else None)
        run_key = hashlib.sha256(f"{cfg.result_hash()}|{ds.name}|{ds.root.resolve()}|{ds.format}|"
                                 f"{_sha(missing_path)}".encode()).hexdigest()[:16]
        store = RunStore(out, run_key, {
            "config": cfg.to_dict(), "profile": cfg.profile, "versions": versions(),
            "threads": torch.get_num_threads(),
            "data": {"name": ds.name, "root": str(ds.root), "format": ds.format,
                     "missing": str(missing_path) if missing_path else None, "items": len(ds)}})
        t_start = time.perf_counter()
        report = RunReport(Path(out), 0, 0, 0)
        try:
            indices = D.incomplete_indices(ds)
            if limit is not None:
                indices = indices[:limit]
            report.incomplete = len(indices)
            done = store.done()
            if on_start:
                on_start(len([i for i in indices if f"{ds.name}:{i}" not in done]))
            samples = []
            for i in indices:
                sid = f"{ds.name}:{i}"
                if sid in done:
                    report.skipped += 1
                    continue
                try:
                    samples.append(D.load_sample(ds, i, ds.missing[i]))
                except SampleError as e:
                    self._error(store, report, e.sample_id, e.message, "load", on_sample)
            if samples:
                models = self.models(need_diffusion=any(s.missing == "image" for s in samples))
                models = dataclasses.replace(models, retriever=load_retriever(cfg, store.root))
                request_log = RequestLog()
                client = LMMClient(models.backend, request_log, store.cache if cfg.lmm.cache else None,
                                   greedy=cfg.lmm.greedy)

                def on_result(res: SampleResult, counts: dict) -> None:
                    store.write_result(res, counts)
                    report.completed += 1
                    report.candidates += len(res.candidates)
                    if on_sample:
                        on_sample(res.sample.sample_id, "done")

                sched = Scheduler(cfg, models, client, on_result,
                                  lambda sid, msg, stage: self._error(store, report, sid, msg, stage, on_sample))
                bs = max(1, cfg.run.batch_size)
                asyncio.run(sched.run([samples[i:i + bs] for i in range(0, len(samples), bs)]))
                report.stage_seconds = {k: round(v, 3) for k, v in sched.clock.seconds.items()}
                report.lmm = request_log.totals()
            report.counts_by_missing = _counts_by_missing(store.results.values())
            report.wall_seconds = round(time.perf_counter() - t_start, 3)
            prev = store.manifest.get("totals", {})
            store.write_manifest(totals={
                "incomplete": report.incomplete, "finished": len(store.results), "errors_this_run": len(report.errors),
                "wall_seconds_this_run": report.wall_seconds, "stage_seconds_this_run": report.stage_seconds,
                "lmm_this_run": report.lmm, "runs": prev.get("runs", 0) + 1},
                counts_by_missing=report.counts_by_missing)
            if export:
                report.exported = export_completed(store.root, ds, Path(export))
        finally:
            store.close()
        return report

    def build_index(self, data: str | Path | None = None, fmt: str | None = None, missing: str | Path | None = None,
                    out: str | Path = "kbridge-out", limit: int | None = None) -> dict:
        """Index the dataset's complete samples into ``<out>/index`` (rank/retrieve.py), so that a
        later ``run`` into ``out`` adds retrieved candidates. LMM answers share the run's cache."""
        from kbridge.engine.rank.retrieve import build_corpus, index_dir
        from kbridge.engine.store import ResponseCache

        ds = D.open_dataset(data, fmt, missing)
        Path(out).mkdir(parents=True, exist_ok=True)
        models = self.models(need_diffusion=False)
        cache = ResponseCache(Path(out) / "cache.sqlite") if self.cfg.lmm.cache else None
        try:
            client = LMMClient(models.backend, RequestLog(), cache, greedy=self.cfg.lmm.greedy)
            return asyncio.run(build_corpus(self.cfg, ds, models.scorer, client, index_dir(self.cfg, Path(out)), limit))
        finally:
            if cache:
                cache.close()

    @staticmethod
    def _error(store: RunStore, report: RunReport, sid: str, msg: str, stage: str, on_sample) -> None:
        log.error("%s: %s", sid, msg)
        store.write_error(sid, msg, stage)
        report.errors.append({"sample_id": sid, "stage": stage, "error": msg})
        if on_sample:
            on_sample(sid, "error")


def _counts_by_missing(rows) -> dict:
    """Mean counted figures per finished sample, split by missing type."""
    out: dict[str, dict] = {}
    for kind in ("image", "text"):
        rs = [r.get("counts", {}) for r in rows if r["missing"] == kind]
        if not rs:
            continue
        keys = sorted({k for r in rs for k in r})
        out[kind] = {"samples": len(rs), **{k: round(sum(r.get(k, 0) for r in rs) / len(rs), 3) for k in keys}}
    return out


def complete(data: str | Path | None = None, out: str | Path = "kbridge-out", profile: str = "tiny",
             **run_kwargs) -> RunReport:
    """One call: build the engine for ``profile`` and run it on ``data`` (demo set by default)."""
    overrides = run_kwargs.pop("overrides", None)
    return Engine(profile=profile, overrides=overrides).run(data=data, out=out, **run_kwargs)
