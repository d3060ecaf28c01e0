"""Admission and jobs: requests become Rows in one long-lived stream through the stage graph.

``Service.start()`` loads the models once (``/health`` says 503 until then) and runs
``executor.stream`` over an async source fed by ``submit``; every request shares the stage
queues, so rows of several requests are batched together at each stage. A ``Job`` follows one
row: its stage events (in order), and its final row. Admission is bounded by count
(``max_queue``) and by estimated cost (UNet evaluations, prompt tokens: ``cost``); Retry-After is
the queued work's estimated drain time. A cancelled job (client gone, timeout, DELETE) is
interrupted where it is (``Hooks.interrupt``: LMM calls aborted, renders stopped between steps) and
frees its slot. ``stuck()`` says why readiness is false; ``drain()`` stops admission, lets admitted
rows finish, and abandons a stream that does not stop. No JSON here: the HTTP layer (app.py)
formats rows.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from kbridge.engine.errors import KbridgeError, LMMEngineDied
from kbridge.engine.executors.local import Hooks, stream
from kbridge.engine.lmm import engine_dead
from kbridge.engine.rows import Row
from kbridge.engine.types import Sample

log = logging.getLogger(__name__)


class QueueFull(KbridgeError):
    """The admission queue is full, by count or by cost (HTTP 429); ``code`` names the limit."""

    def __init__(self, retry_after: int, code: str = "max_queue", what: str = "the admission queue is full"):
        super().__init__(f"{what} ({code}); retry in {retry_after} s")
        self.retry_after, self.code = retry_after, code


class NotReady(KbridgeError):
    """Models are still loading, or the service is shutting down (HTTP 503)."""


class BadRequest(KbridgeError):
    """A request cannot be used (HTTP 400, 401, 404, 413 or 422, as ``status`` says); ``code``
    names the field or limit at fault (the error body's ``code``)."""

    def __init__(self, message: str, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


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
    cost: dict = field(default_factory=dict)
    """Estimated work (``Service.cost``): admission limits and Retry-After."""
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
        from kbridge.engine.plan import resolve_schedule

        self.engine, self.cfg, self.limits = engine, engine.cfg, engine.cfg.serve
        if resolve_schedule(self.cfg) != "fused":
            raise KbridgeError("kbridge serve needs every model resident (the fused schedule); this profile's "
                               "plan is phased: use a profile or --config whose models fit together")
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
        self._s_per_unet = 0.01  # running mean seconds per UNet evaluation, for Retry-After
        self.load_error: str | None = None
        self._progress = time.time()
        """Last time the pipeline moved: a stage call returned (not failed by the watchdog), a job
        finished, or work arrived while idle."""
        self._tok = None
        self._lmm = None
        self.stopped: str | None = None
        """Why the stream stopped, when it did (readiness then says so)."""

    # ---- lifecycle
    async def start(self) -> None:
        """Load the models (off the event loop), then run the stream until ``drain``."""
        from kbridge.engine.stages import GRAPH

        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        try:
            ctx = await asyncio.to_thread(self.engine.context, {"lmm", "scorer", "generators"},
                                          self.cfg.rank.index_dir or None, trace=self.tracer)
        except Exception as e:  # the service stays up and says why in /health
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("models failed to load: %s", self.load_error)
            return
        from kbridge.engine.lmm.special import tokenizer_of

        self._lmm = ctx.models.lmm
        tok = tokenizer_of(ctx.models.lmm)
        self._tok = copy.deepcopy(tok) if tok is not None else None  # intake's own: no sharing across threads
        self._task = asyncio.ensure_future(stream(self._source(), GRAPH, ctx, self._sink, hooks=self.hooks))
        self._task.add_done_callback(self._stopped)
        self.ready = True

    def _stopped(self, task: asyncio.Task) -> None:
        self.ready = False
        if self.tracer is not None:  # the stream is over: the trace file is complete
            self.tracer.close()
        if not task.cancelled() and task.exception() is not None:
            e = task.exception()
            if isinstance(e, LMMEngineDied):  # the requests in flight failed with their own error
                self.stopped = f"the LMM engine died ({e.reason}); restart kbridge serve"
            else:
                self.stopped = f"the pipeline stopped: {type(e).__name__}: {e}"
            log.error("%s", self.stopped)
            for job in list(self.jobs.values()):  # never admitted: answered now (503), not left to time out
                if job.row is None:
                    self._finish(job, Row(job.sample).fail("admission", self.stopped))

    def unready(self) -> str | None:
        """Why requests are not admitted or cannot make progress now (readiness 503), or None."""
        if self.draining:
            return "draining"
        if self.load_error:
            return f"models failed to load: {self.load_error}"
        if self.stopped:
            return self.stopped
        dead = engine_dead(self._lmm)
        if dead:  # no request could complete: the stream stops admitting, and so does intake
            return f"the LMM engine died ({dead}); restart kbridge serve"
        return "loading models" if not self.ready else self.stuck()

    def stuck(self) -> str | None:
        """Requests admitted and no stage call completed for the watchdog's time, or None."""
        idle = time.time() - self._progress
        limit = self.cfg.run.stage_timeout_s
        if self.active and idle > limit:
            return (f"stuck: no stage progress for {idle:.0f} s (run.stage_timeout_s = {limit:g}) "
                    f"with {self.active} requests admitted")  # e.g. a wedged device: calls time out one by one
        return None

    async def drain(self, timeout: float | None = None) -> None:
        """Stop admission; finish admitted work. After ``timeout`` what is left is cancelled and
        waited for as long again; a stream still not done then (a stuck call) is abandoned."""
        self.draining = True
        if self._task is None:
            return
        self._inbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            for j in list(self.jobs.values()):
                self.cancel(j)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                log.error("drain: the pipeline did not stop; abandoning %d requests", self.active)
                self._task.cancel()

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
        return Row(job.sample, cfg=request_config(self, job), steps=job.overrides.steps, job=job.id)

    # ---- requests
    def cost(self, sample: Sample, ov: Overrides, tokens: int = 0) -> dict:
        """A request's estimated work: UNet evaluations (candidates × steps, × 2 with classifier-free
        guidance) and prompt tokens of its text."""
        g = self.cfg.generation
        unet = 0
        if sample.missing == "image":
            unet = (ov.candidates or g.candidates) * (ov.steps or g.steps) * (2 if g.guidance > 1 else 1)
        return {"unet_evals": unet, "prompt_tokens": tokens}

    def queued(self) -> dict:
        """Estimated work admitted and not finished."""
        out = {"unet_evals": 0, "prompt_tokens": 0}
        for j in self.jobs.values():
            if j.row is None:
                for k in out:
                    out[k] += j.cost.get(k, 0)
        return out

    def retry_after(self, extra_unet: int = 0) -> int:
        """Seconds until the queue has drained enough: the work queued (UNet evaluations at the
        measured rate, plus a request-time share per job), at least 1."""
        q = self.queued()["unet_evals"] + extra_unet
        s = q * self._s_per_unet + self._mean_s * self.active / max(1, self.cfg.run.rows_in_flight)
        return max(1, math.ceil(s))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the LMM's tokenizer; UTF-8 bytes when it is remote (an upper bound
        for byte-level BPE)."""
        tok = self._tok
        if tok is None:
            return len(text.encode("utf-8", "replace"))
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def submit(self, sample: Sample, overrides: Overrides | None = None, images: str = "inline",
               cost: dict | None = None) -> Job:
        dead = engine_dead(self._lmm)
        if dead and not self.draining:
            raise NotReady(f"the LMM engine died ({dead}); restart kbridge serve")
        if self.draining or not self.ready:
            raise NotReady("draining: shutting down" if self.draining else self.stopped if self.stopped else
                           f"models failed to load: {self.load_error}" if self.load_error else "models are loading")
        self.prune()
        ov = overrides or Overrides()
        check_overrides(self, ov)
        lim = self.limits
        c = self.cost(sample, ov, (cost or {}).get("prompt_tokens", 0))
        if c["unet_evals"] > lim.max_request_unet_evals:
            raise BadRequest(f"the request costs {c['unet_evals']} UNet evaluations (candidates × steps × 2), over "
                             f"the limit of {lim.max_request_unet_evals} (max_request_unet_evals)", 422,
                             "max_request_unet_evals")
        q = self.queued()
        full = None
        if self.active >= lim.max_queue:
            full = ("max_queue", "the admission queue is full")
        elif q["unet_evals"] and q["unet_evals"] + c["unet_evals"] > lim.max_queued_unet_evals:
            full = ("max_queued_unet_evals", "the queued render work is at its limit")
        elif q["prompt_tokens"] and q["prompt_tokens"] + c["prompt_tokens"] > lim.max_queued_prompt_tokens:
            full = ("max_queued_prompt_tokens", "the queued LMM work is at its limit")
        if full:
            if self.metrics:
                self.metrics.requests.labels(status="rejected").inc()
            raise QueueFull(self.retry_after(), *full)
        job = Job(uuid.uuid4().hex[:16], sample, time.time(), ov, images, cost=c)
        self.jobs[job.id] = job
        if not self.active:
            self._progress = time.time()
        self.active += 1
        self._inbox.put_nowait(job)
        return job

    def cancel(self, job: Job) -> None:
        """Give the job up: its queued work is skipped, a render in progress stops at the next
        denoising step, its LMM requests in flight are aborted; its slot is freed."""
        if job.row is None and not job.cancelled:
            job.cancelled = True
            if self.hooks.interrupt is not None:
                self.hooks.interrupt()

    async def wait(self, job: Job) -> Row:
        while job.row is None:
            await job.changed.wait()
        return job.row

    def get(self, job_id: str) -> Job | None:
        self.prune()
        return self.jobs.get(job_id)

    def queue_depths(self) -> dict[str, int]:
        depths = {"admission": self._inbox.qsize() if self._inbox else 0}
        depths.update({name: q.qsize() for name, q in self.hooks.queues.items()})
        return depths

    # ---- stream callbacks
    def _job(self, row: Row) -> Job:
        return self.jobs[row.job]

    def _on_stage(self, stage: str, rows: list[Row]) -> None:
        if not all(_timed_out(r) for r in rows):  # a call failed by the watchdog is not progress
            self._progress = time.time()
        if self.metrics:
            self.metrics.stage_call(stage, rows)
        for r in rows:
            job = self.jobs.get(r.job)
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
        if not _timed_out(row):
            self._progress = job.finished
        # a finished job keeps its answer, not its decoded input (bounded memory)
        job.sample = dataclasses.replace(job.sample, image=None)
        job.row = row.replace(sample=job.sample, cfg=None)
        job.events = [(st, r.replace(sample=job.sample, cfg=None)) for st, r in job.events]
        job.status = "done" if row.error is None else "cancelled" if job.cancelled or row.error.message == "cancelled" \
            else "error"
        self.active -= 1
        self._mean_s = 0.8 * self._mean_s + 0.2 * (job.finished - job.created)
        unet = row.counts().get("unet_evals", 0)
        if unet and row.error is None:
            busy = sum(b - a for st, a, b in row.timings if st == "render")
            self._s_per_unet = 0.8 * self._s_per_unet + 0.2 * busy / unet
        if self.metrics:
            self.metrics.finished(job, row)
        job.notify()

    def prune(self) -> None:
        """Finished jobs are kept readable for files_ttl_s."""
        old = time.time() - self.limits.files_ttl_s
        for jid in [j for j, job in self.jobs.items() if job.row is not None and job.finished < old]:
            del self.jobs[jid]


def _timed_out(row: Row) -> bool:
    from kbridge.engine.stages import WATCHDOG

    return row.error is not None and WATCHDOG in row.error.message


def check_overrides(svc: Service, ov: Overrides) -> None:
    lim = svc.limits
    if ov.candidates is not None and not 1 <= ov.candidates <= lim.max_candidates:
        raise BadRequest(f"candidates must be between 1 and {lim.max_candidates}", 422)
    if ov.steps is not None and not 1 <= ov.steps <= lim.max_steps:
        raise BadRequest(f"steps must be between 1 and {lim.max_steps}", 422)
    if ov.seed is not None and not 0 <= ov.seed < 2**63:
        raise BadRequest("seed must be between 0 and 2**63 - 1", 422)


def request_config(svc: Service, job: Job):
    """A per-request configuration copy (same models) when the request overrides the candidates or
    the seed, else None (the service's); ``steps`` rides on the row itself (``Row.steps``)."""
    ov, cfg = job.overrides, svc.cfg
    changes = {}
    if ov.candidates is not None and ov.candidates != cfg.generation.candidates:
        changes["generation"] = dataclasses.replace(cfg.generation, candidates=ov.candidates)
    if ov.seed is not None and ov.seed != cfg.run.seed:
        changes["run"] = dataclasses.replace(cfg.run, seed=ov.seed)
    # not kept: equal copies compare equal, so their rows still batch together
    return dataclasses.replace(cfg, **changes) if changes else None

