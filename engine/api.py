"""The Python API: ``Engine`` loads models once and runs datasets; ``complete`` is one call.

    from kbridge.engine import Engine, complete
    report = complete(out="runs/demo")                     # tiny models, bundled demo set
    eng = Engine(profile="tiny", overrides={"generation": {"candidates": 3}})
    report = eng.run(data="path/to/coco", missing="missing.json", out="runs/coco", limit=100)
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import platform
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kbridge.engine import data as D
from kbridge.engine.config import ConfigError, PipelineConfig, build_config
from kbridge.engine.domains import domain_of
from kbridge.engine.executors.local import stream
from kbridge.engine.models import Models, load_generator, load_lmm, load_scorer, make_context, render_devices
from kbridge.engine.plan import placed, resolve_schedule
from kbridge.engine.stages import GRAPH, PHASES, Ctx
from kbridge.engine.store import RunStore, export_completed, read_results

log = logging.getLogger(__name__)

EXECUTORS = {"local": "kbridge.engine.executors.local", "ray": "kbridge.engine.executors.ray"}
"""``run(executor=...)`` → the module that runs the stages, imported when chosen. Each has
``manifest(cfg, address)`` (refuses what it cannot run before the run directory is touched; returns
what the manifest records about it) and ``execute(eng, store, ds, todo, schedule, report, t_start,
on_sample, address)`` (every finished row into the run's sink)."""


def executor_module(name: str):
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
    return importlib.import_module(EXECUTORS[name])


def load_generators(cfg: PipelineConfig) -> list:
    """One generator replica per render device."""
    return [load_generator(cfg, d) for d in render_devices(cfg)]


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
    latency: dict = field(default_factory=dict)
    """Per-sample latency of this call (admission → result written): p50_s, p95_s."""
    stopped: str | None = None
    """Why the run stopped starting samples before all were done (the LMM engine died), or None:
    the samples in flight then failed with their own lines, the rest were not started."""


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
        self.cfg = cfg = cfg or build_config(profile, config_file, overrides)
        domain_of(cfg).check(cfg)  # what the domain cannot run is refused before any work
        self._models: Models | None = None
        self.loaders: dict[str, Callable[[PipelineConfig], object]] = {
            "lmm": load_lmm, "scorer": load_scorer, "generators": load_generators}
        """How each model slot is loaded from the engine's config (a test or an embedding application
        may replace one). The Ray executor's actors call the same loaders with their own config."""
        self.tracer = None
        """The running ``engine.trace.Tracer`` during a traced ``run`` (else None)."""
        self.executor = stream
        """``async (source, stages, ctx, sink, busy)`` that moves rows through stages (the benchmark
        swaps in the v0.1 batch-barrier pattern to compare executors on the same stages)."""

    def models(self, need_diffusion: bool = True) -> Models:
        """The loaded models (LMM, scorer, and the generator replicas when ``need_diffusion``)."""
        return self.ensure({"lmm", "scorer"} | ({"generators"} if need_diffusion else set()))

    def ensure(self, slots: set[str]) -> Models:
        """Load the slots not loaded yet; what is loaded stays."""
        from kbridge.engine.models import quiet_libraries

        m = self._models = self._models or Models()
        quiet_libraries()
        for slot in ("lmm", "scorer", "generators"):
            if slot in slots and not getattr(m, slot):
                setattr(m, slot, self.loaders[slot](self.cfg))
        return m

    def release(self, slots: set[str]) -> None:
        """Give back the memory of these slots' models (the phased schedule, between phases)."""
        if self._models is not None:
            self._models.release(*slots)
    def context(self, slots: set[str], index_dir: Path | None = None, cache=None, **fields) -> Ctx:
        """The one way to build what stage calls get: the ``slots`` loaded (what is loaded stays), the
        corpus index of ``index_dir`` as the retriever when given (a run directory, or
        ``rank.index_dir``), an LMM client over the loaded LMM answering from ``cache`` when the
        config keeps one, and any other ``Ctx`` field (``dataset``, ``trace``, ``pools``)."""
        return make_context(self.cfg, self.ensure(slots), index_dir, cache, **fields)

    def run(self, data: str | Path | None = None, fmt: str | None = None, missing: str | Path | None = None,
            out: str | Path = "kbridge-out", limit: int | None = None,
            export: str | Path | None = None, on_start: Callable[[int], None] | None = None,
            on_sample: Callable[[str, str], None] | None = None, executor: str = "local",
            ray_address: str | None = None, metadata: str | Path | None = None, trace=None) -> RunReport:
        """Complete every incomplete sample of a dataset (the domain's demo set when ``data`` is None).

        ``on_start(n)`` gets the number of samples left to do; ``on_sample(sample_id, status)`` is
        called as each finishes ("done" / "error"). ``executor``: "local" (the streaming executor
        in this process) or "ray" (the same stages as Ray Data operators, engine/executors/ray.py;
        ``ray_address`` joins a cluster, else a local instance is started and stopped).
        ``trace``: an ``engine.trace.TraceOptions`` (``--trace``): the run's timeline is written there.
        Raises DataError for an unreadable dataset and RunConfigMismatch for a reused ``out``.
        """
        import torch

        cfg = self.cfg = placed(self.cfg)  # on a GPU box: the memory plan's devices (no-op on CPU)
        domain = domain_of(cfg)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if data is None:
            data, demo_fmt, demo_missing = domain.demo()
            fmt, missing = fmt or demo_fmt, missing or demo_missing
        fmt = fmt or domain.default_format
        ds = D.open_dataset(data, fmt, missing, metadata=metadata, max_pixels=cfg.run.max_pixels)
        run_key = hashlib.sha256(f"{cfg.result_hash()}|{ds.name}|{ds.root.resolve()}|{ds.format}|"
                                 f"{_sha(missing)}{f'|{metadata}' if metadata else ''}".encode()).hexdigest()[:16]
        schedule = resolve_schedule(cfg)
        runner = executor_module(executor)
        executor_info = runner.manifest(cfg, ray_address)
        phases = [list(p) for p in PHASES] if schedule == "phased" else [[s.name for s in GRAPH]]
        store = RunStore(out, run_key, {
            "config": cfg.to_dict(), "profile": cfg.profile, "versions": versions(),
            "threads": torch.get_num_threads(), "schedule": schedule, "phases": phases, "executor": executor, **executor_info,
            "data": {"name": ds.name, "root": str(ds.root), "format": ds.format,
                     "missing": str(missing) if missing else None, "items": len(ds)}})
        t_start = time.time()
        report = RunReport(Path(out), 0, 0, 0)
        self.tracer = None
        if trace is not None:
            from kbridge.engine.trace import Tracer

            self.tracer = Tracer(trace, {"profile": cfg.profile, "executor": executor, "schedule": schedule,
                                         "run_dir": str(Path(out).resolve())})
        try:
            indices = D.incomplete_indices(ds)
            if limit is not None:
                indices = indices[:limit]
            report.incomplete = len(indices)
            done = store.done()
            todo = [i for i in indices if f"{ds.name}:{i}" not in done]
            report.skipped = len(indices) - len(todo)
            if on_start:
                on_start(len(todo))
            if todo:
                runner.execute(self, store, ds, todo, schedule, report, t_start, on_sample, ray_address)
            report.counts_by_missing = _counts_by_missing(store.root)
            report.wall_seconds = round(time.time() - t_start, 3)
            prev = store.manifest.get("totals", {})
            store.write_manifest(totals={
                "incomplete": report.incomplete, "finished": len(store.finished),
                "errors_this_run": len(report.errors), "wall_seconds_this_run": report.wall_seconds,
                "stage_seconds_this_run": report.stage_seconds, "lmm_this_run": report.lmm,
                "latency_this_run": report.latency, "resumed_this_run": report.skipped,
                **({"stopped_this_run": report.stopped} if report.stopped else {}),
                "runs": prev.get("runs", 0) + 1},
                counts_by_missing=report.counts_by_missing)
            if export:
                report.exported = export_completed(store.root, ds, Path(export))
        finally:
            if self.tracer is not None:
                self.tracer.close()
            store.close()
        return report

    def build_index(self, data: str | Path | None = None, fmt: str | None = None, missing: str | Path | None = None,
                    out: str | Path = "kbridge-out", limit: int | None = None,
                    metadata: str | Path | None = None) -> dict:
        """Index the dataset's complete samples into ``<out>/index`` (retrieve/corpus.py), so that a
        later ``run`` into ``out`` adds retrieved candidates. LMM answers share the run's cache."""
        from kbridge.engine.retrieve.corpus import build_corpus, index_dir
        from kbridge.engine.store import ResponseCache

        ds = D.open_dataset(data, fmt, missing, metadata=metadata, max_pixels=self.cfg.run.max_pixels)
        Path(out).mkdir(parents=True, exist_ok=True)
        cache = ResponseCache(Path(out) / "cache.sqlite") if self.cfg.lmm.cache else None
        try:
            ctx = self.context({"lmm", "scorer"}, cache=cache)
            return asyncio.run(build_corpus(self.cfg, ds, ctx.models.scorer, ctx.client, index_dir(self.cfg, Path(out)),
                                            limit))
        finally:
            if cache:
                cache.close()


def _counts_by_missing(run_dir: Path) -> dict:
    """Mean counted figures per finished sample, split by missing type (read line by line)."""
    sums: dict[str, dict] = {}
    n: dict[str, int] = defaultdict(int)
    for r in read_results(run_dir):
        kind = r["missing"]
        n[kind] += 1
        acc = sums.setdefault(kind, defaultdict(float))
        for k, v in r.get("counts", {}).items():
            acc[k] += v
    return {kind: {"samples": n[kind], **{k: round(v / n[kind], 3) for k, v in sorted(sums[kind].items())}}
            for kind in ("image", "text") if kind in sums}


def complete(data: str | Path | None = None, out: str | Path = "kbridge-out", profile: str = "tiny",
             **run_kwargs) -> RunReport:
    """One call: build the engine for ``profile`` and run it on ``data`` (demo set by default)."""
    overrides = run_kwargs.pop("overrides", None)
    return Engine(profile=profile, overrides=overrides).run(data=data, out=out, **run_kwargs)
