"""Admission and jobs: requests become Rows in one long-lived stream through the stage graph.

``Service.start()`` loads the models once (``/health`` says 503 until then) and runs
``executor.stream`` over an async source fed by ``submit``; every request shares the stage
queues, so rows of several requests are batched together at each stage. A ``Job`` follows one
row: its stage events (in order), and its final row. Admission is bounded (``max_queue``: jobs
admitted and not finished); a cancelled job (client gone, timeout) fails at the next stage its
row reaches and frees its slot. ``drain()`` stops admission, lets admitted rows finish, returns.
No JSON here: the HTTP layer (app.py) formats rows.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from kbridge.engine.errors import KbridgeError
from kbridge.engine.executor import Hooks, stream
from kbridge.engine.rows import Row
from kbridge.engine.types import Sample

log = logging.getLogger("kbridge.serve")


class QueueFull(KbridgeError):
    """The admission queue is full (HTTP 429)."""

    def __init__(self, retry_after: int):
        super().__init__(f"the admission queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class NotReady(KbridgeError):
    """Models are still loading, or the service is shutting down (HTTP 503)."""


class BadRequest(KbridgeError):
    """A request field cannot be used (HTTP 400, 413 or 422, as ``status`` says)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Overrides:
    """What a request may change without other models: checked against the [serve] limits."""

    candidates: int | None = None
    seed: int | None = None
    steps: int | None = None


@dataclass
class Job:
    id: str
    sample: Sample
    created: float
    overrides: Overrides = field(default_factory=Overrides)
    images: str = "inline"
    """How the HTTP layer returns generated images: "inline" (base64) or "url"."""
    events: list[tuple[str, Row]] = field(default_factory=list)
    """(stage, the row as that stage left it), in the order the stages finished."""
    row: Row | None = None
    """The final row (result or failure)."""
    status: str = "queued"
    """queued → running → done | error | cancelled."""
    cancelled: bool = False
    finished: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def content_id(missing: str, text: str | None, image_bytes: bytes | None) -> str:
    """The default sample id: a hash of the request's content (same request, same seeds)."""
    h = hashlib.sha256(missing.encode())
    h.update(b"\0text\0" + (text or "").encode())
    h.update(b"\0image\0" + (image_bytes or b""))
    return f"req:{h.hexdigest()[:16]}"


def sample_index(sample_id: str) -> int:
    tail = sample_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


class Service:
    def __init__(self, engine, metrics=None, trace=None):
        from kbridge.engine.domains import domain_of
        from kbridge.engine.plan import resolve_schedule

        self.engine, self.cfg, self.limits = engine, engine.cfg, engine.cfg.serve
        if resolve_schedule(self.cfg) != "fused":
            raise KbridgeError("kbridge serve needs every model resident (the fused schedule); this profile's "
                               "plan is phased: use a profile or --config whose models fit together")
        self.domain = domain_of(self.cfg)
        self.metrics = metrics
        self.tracer = trace
        """``kbridge serve --trace``: an ``engine.trace.Tracer`` (closed when the service drains)."""
        self.jobs: dict[str, Job] = {}
        self.active = 0
        """Jobs admitted and not finished (bounded by max_queue)."""
        self.ready = False
        self.draining = False
        self.hooks = Hooks(on_stage=self._on_stage, cancelled=lambda r: self._job(r).cancelled)
        self._inbox: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mean_s = 1.0  # running mean request seconds, for Retry-After
        self.load_error: str | None = None
        self.cfgs: dict = {}
        """Per-request configuration copies; equal overrides share one object (their rows batch together)."""

    # ---- lifecycle
    async def start(self) -> None:
        """Load the models (off the event loop), then run the stream until ``drain``."""
        from kbridge.engine.lmm import LMMClient, RequestLog
        from kbridge.engine.models import load_retriever
        from kbridge.engine.stages import GRAPH, Ctx

        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        try:
            models = await asyncio.to_thread(self.engine.ensure, {"lmm", "scorer", "generators"})
        except Exception as e:  # the service stays up and says why in /health
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("models failed to load: %s", self.load_error)
            return
        models.retriever = None if not self.cfg.rank.index_dir else load_retriever(self.cfg, self.cfg.rank.index_dir)
        ctx = Ctx(cfg=self.cfg, domain=self.domain, models=models,
                  client=LMMClient(models.lmm, RequestLog(), None, greedy=self.cfg.lmm.greedy), trace=self.tracer)
        self._task = asyncio.ensure_future(stream(self._source(), GRAPH, ctx, self._sink, hooks=self.hooks))
        self._task.add_done_callback(self._stopped)
        self.ready = True

    def _stopped(self, task: asyncio.Task) -> None:
        self.ready = False
        if self.tracer is not None:  # the stream is over: the trace file is complete
            self.tracer.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("the stream stopped: %s", task.exception())

    async def drain(self, timeout: float | None = None) -> None:
        """Stop admission; finish admitted work (cancel what is left after ``timeout``)."""
        self.draining = True
        if self._task is None:
            return
        self._inbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            for j in self.jobs.values():
                if j.row is None:
                    j.cancelled = True
            await self._task

    async def _source(self):
        while True:
            job = await self._inbox.get()
            if job is None:
                return
            if job.cancelled:
                self._finish(job, Row(job.sample).fail("admission", "cancelled"))
                continue
            job.status = "running"
            yield self._row(job)

    def _row(self, job: Job) -> Row:
        return Row(job.sample, extra={**job_extra(self, job), "job": job.id})

    # ---- requests
    def submit(self, sample: Sample, overrides: Overrides | None = None, images: str = "inline") -> Job:
        if self.draining or not self.ready:
            raise NotReady("shutting down" if self.draining else
                           f"models failed to load: {self.load_error}" if self.load_error else "models are loading")
        self._prune()
        if self.active >= self.limits.max_queue:
            if self.metrics:
                self.metrics.requests.labels(status="rejected").inc()
            raise QueueFull(max(1, round(self._mean_s * self.active / max(1, self.cfg.run.rows_in_flight))))
        ov = overrides or Overrides()
        check_overrides(self, ov)
        job = Job(uuid.uuid4().hex[:16], sample, time.time(), ov, images)
        self.jobs[job.id] = job
        self.active += 1
        self._inbox.put_nowait(job)
        return job

    def cancel(self, job: Job) -> None:
        if job.row is None:
            job.cancelled = True

    async def wait(self, job: Job) -> Row:
        while job.row is None:
            await job.changed.wait()
        return job.row

    def get(self, job_id: str) -> Job | None:
        self._prune()
        return self.jobs.get(job_id)

    def queue_depths(self) -> dict[str, int]:
        depths = {"admission": self._inbox.qsize() if self._inbox else 0}
        depths.update({name: q.qsize() for name, q in self.hooks.queues.items()})
        return depths

    # ---- stream callbacks
    def _job(self, row: Row) -> Job:
        return self.jobs[row.extra["job"]]

    def _on_stage(self, stage: str, rows: list[Row]) -> None:
        if self.metrics:
            self.metrics.stage_call(stage, rows)
        for r in rows:
            job = self.jobs.get(r.extra.get("job"))
            if job is not None and r.error is None:
                job.events.append((stage, r))
                job.notify()

    def _sink(self, row: Row) -> None:
        """Writer thread: hand the row back to the event loop."""
        if self.tracer is not None:
            self.tracer.row(row)
        self._loop.call_soon_threadsafe(self._finish, self._job(row), row)

    def _finish(self, job: Job, row: Row) -> None:
        if job.row is not None:
            return
        job.row, job.finished = row, time.time()
        job.status = "done" if row.error is None else "cancelled" if row.error.message == "cancelled" else "error"
        self.active -= 1
        self._mean_s = 0.8 * self._mean_s + 0.2 * (job.finished - job.created)
        if self.metrics:
            self.metrics.finished(job, row)
        job.notify()

    def _prune(self) -> None:
        """Finished jobs are kept readable for files_ttl_s."""
        old = time.time() - self.limits.files_ttl_s
        for jid in [j for j, job in self.jobs.items() if job.row is not None and job.finished < old]:
            del self.jobs[jid]


def check_overrides(svc: Service, ov: Overrides) -> None:
    lim = svc.limits
    if ov.candidates is not None and not 1 <= ov.candidates <= lim.max_candidates:
        raise BadRequest(f"candidates must be between 1 and {lim.max_candidates}", 422)
    if ov.steps is not None and not 1 <= ov.steps <= lim.max_steps:
        raise BadRequest(f"steps must be between 1 and {lim.max_steps}", 422)
    if ov.seed is not None and not 0 <= ov.seed < 2**63:
        raise BadRequest("seed must be between 0 and 2**63 - 1", 422)


def job_extra(svc: Service, job: Job) -> dict:
    """A per-request configuration copy (same models) when the request overrides something."""
    ov, cfg = job.overrides, svc.cfg
    extra: dict = {}
    changes = {}
    if ov.candidates is not None and ov.candidates != cfg.generation.candidates:
        changes["generation"] = dataclasses.replace(cfg.generation, candidates=ov.candidates)
    if ov.seed is not None and ov.seed != cfg.run.seed:
        changes["run"] = dataclasses.replace(cfg.run, seed=ov.seed)
    if changes:
        new = dataclasses.replace(cfg, **changes)
        extra["cfg"] = svc.cfgs.setdefault(new, new)
    if ov.steps is not None:
        extra["steps"] = ov.steps
    return extra

