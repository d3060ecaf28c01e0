"""The local streaming executor: rows flow through bounded, micro-batched stage queues.

- At most ``run.rows_in_flight`` rows are in the pipeline (admitted, not yet written); the source
  waits for a free slot, so memory follows the rows in flight, never the dataset.
- Each stage takes what is ready, up to its batch size, waiting at most ``run.batch_wait_ms`` for
  more (like continuous batching), and hands each row on as soon as its own call is done: a row
  never waits for a batch-mate at another stage. A row a stage does not apply to (a text-missing
  row at render, a failed row) is passed on the moment it arrives, even while the stage's worker
  is busy: it never queues behind another row's work. LMM stages are async and keep taking rows
  while earlier calls are in flight; with a continuously batching backend (HTTP, vLLM) each
  row's requests go out on their own, so a slow answer holds up only its own sample.
- Dense stages run on one worker thread per model and device (render: one worker per generator
  replica, all pulling from the same queue: data-parallel diffusion; retrieve and rank: the
  scorer's own worker), so a short scoring call never waits for a long render on the same
  device. The sink (results, PNGs, fsync) runs on its own thread, off the event loop.
- Any exception inside a stage call (StopIteration, BaseException subclasses included) fails that
  call's rows (the traceback travels with the failure), never the run, and frees their slots. A
  call that has not returned after ``run.stage_timeout_s`` (the watchdog) fails its rows too; a
  stuck worker thread is abandoned and the stage's later calls get a fresh one. An exception in
  the sink (disk full, …) stops the run: nothing computed afterwards could be kept.
- Long-lived use (``kbridge serve``): the source may be an async iterable (e.g. rows from an
  ``asyncio.Queue``, ended on shutdown: the stream then drains what was admitted and returns);
  ``Hooks`` report each stage call's rows, expose the stage queues, and drop cancelled rows at the
  next stage they reach. A row may carry its own configuration in ``Row.cfg`` (a request's
  overrides over the same loaded models); a stage call only ever sees rows of one configuration.
- How a stage is called (pass-through, micro-batches, one call per row for a continuously
  batching backend, failures, timing, tracing) is ``stages.run_stage``, shared with the Ray
  executor; this module decides only when and where (queues, threads, the watchdog).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterable, Callable, Iterable, Sequence

from kbridge.engine.errors import LMMEngineDied
from kbridge.engine.lmm import engine_dead
from kbridge.engine.rows import Row
from kbridge.engine.stages import Call, Ctx, Stage, call_sync, passes, run_stage

log = logging.getLogger(__name__)


def _device(gen) -> str:
    return str(getattr(getattr(gen, "cfg", None), "device", "cpu"))


@dataclass
class Hooks:
    """Observers of a long-lived stream (all optional; called on the event loop)."""

    on_stage: Callable[[str, list[Row]], None] | None = None
    """After each stage call: the stage name and the call's output rows (its batch)."""
    cancelled: Callable[[Row], bool] | None = None
    """Rows for which this is true fail as "cancelled" at the next stage they reach (a call in
    progress finishes first), so they reach the sink and free their slot without more work."""
    queues: dict = field(default_factory=dict)
    """Filled by ``stream``: stage name → the queue of rows waiting for its work (queue-depth gauges)."""
    interrupt: Callable[[], None] | None = None
    """Filled by ``stream``: call it after rows were cancelled; in-flight LMM calls whose rows are
    all cancelled are cancelled now (the backend aborts them: vLLM's abort, a closed HTTP request).
    Renders check ``cancelled`` themselves between denoising steps."""


async def stream(source: Iterable[Row] | AsyncIterable[Row], stages: Sequence[Stage], ctx: Ctx,
                 sink: Callable[[Row], None], busy: dict | None = None, hooks: Hooks | None = None) -> int:
    """Stream every row of ``source`` through ``stages`` into ``sink`` (called on the writer
    thread, once per row, failed rows included). Returns the number of rows streamed."""
    cfg = ctx.cfg
    hooks = hooks or Hooks()
    loop = asyncio.get_running_loop()
    busy = busy if busy is not None else defaultdict(float)
    slots = asyncio.Semaphore(max(1, cfg.run.rows_in_flight))
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in range(len(stages) + 1)]
    """queues[i]: rows arriving at stage i (the last: at the writer)."""
    work: list[asyncio.Queue] = [asyncio.Queue() for _ in stages]
    """work[i]: rows waiting for stage i's own work (those it applies to)."""
    # a run's long-lived pools (ctx.pools): a device's dense stage keeps its thread across phases, so
    # thread-local state (cudagraph trees of compile_mode=reduce-overhead) is recorded once per run
    pools: dict[str, ThreadPoolExecutor] = ctx.pools if ctx.pools is not None else {}
    locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
    wait = cfg.run.batch_wait_ms / 1000.0
    watchdog = cfg.run.stage_timeout_s
    inflight: dict[asyncio.Task, list[Row]] = {}
    """LMM calls in flight and their rows (``hooks.interrupt`` cancels those whose rows are all cancelled)."""
    if hooks.cancelled is not None:
        ctx = replace(ctx, cancelled=hooks.cancelled)

    def interrupt() -> None:
        for t, rows in list(inflight.items()):
            if all(hooks.cancelled(r) for r in rows):
                t.cancel()

    hooks.interrupt = interrupt if hooks.cancelled is not None else (lambda: None)
    state = {"admitted": 0, "written": 0, "fed": False}
    finished = asyncio.Event()
    abort: list[BaseException] = []
    tasks: set[asyncio.Task] = set()
    active: dict[str, list] = defaultdict(lambda: [0, 0.0])  # per stage: calls in flight, since when

    def enter(name: str) -> None:
        a = active[name]
        if a[0] == 0:
            a[1] = time.time()
        a[0] += 1

    def leave(name: str) -> None:
        """Busy time is wall time with at least one call of the stage in flight (concurrent LMM
        calls of one stage are not counted twice)."""
        a = active[name]
        a[0] -= 1
        if a[0] == 0:
            busy[name] += time.time() - a[1]

    def pool(key: str, workers: int = 1) -> ThreadPoolExecutor:
        if key not in pools:
            pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"kbridge-{key}")
        return pools[key]

    def spawn(coro) -> None:
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    def skip(st: Stage, r: Row) -> Row | None:
        """``r`` failed (or cancelled, now failed) or not for this stage: None; else ``r``."""
        if r.error is None and hooks.cancelled is not None and hooks.cancelled(r):
            r = r.fail(st.name, "cancelled")
        return r if passes(st, r, cfg) else None

    async def route(i: int, st: Stage) -> None:
        """Rows arriving at stage i: its own work to its workers, every other row straight on."""
        while True:
            r = await queues[i].get()
            passed = skip(st, r)
            if passed is not None:
                queues[i + 1].put_nowait(passed)
            else:
                work[i].put_nowait(r)

    async def take(i: int, st: Stage, n: int) -> list[Row]:
        """Up to ``n`` rows of this stage's work (a row cancelled while it waited goes on)."""
        q, nxt = work[i], queues[i + 1]
        batch: list[Row] = []
        deadline = None
        while len(batch) < n:
            if not batch:
                r = await q.get()
            else:
                try:
                    r = q.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(0.001, left))
                    continue
            passed = skip(st, r)
            if passed is not None:
                nxt.put_nowait(passed)
                continue
            batch.append(r)
            if deadline is None:
                deadline = loop.time() + wait
        return batch

    def runner(key: str):
        """How a call of a stage runs here: an LMM call awaited under the watchdog (and listed in
        ``inflight`` for ``interrupt``), a dense or I/O call on its worker thread, one at a time per
        model and device; busy time is counted per stage."""

        async def run(st: Stage, rows: list[Row], wctx: Ctx) -> Call:
            if st.kind == "lmm":
                enter(st.name)
                try:
                    inner = asyncio.ensure_future(st.fn(rows, wctx))
                    inflight[inner] = rows
                    a = time.time()
                    try:  # not wait_for: a call that ignores its cancellation must not hold the watchdog too
                        await asyncio.wait({inner}, timeout=watchdog)
                    finally:
                        inflight.pop(inner, None)
                        if not inner.done():
                            inner.cancel()
                    if not inner.done():
                        raise asyncio.TimeoutError
                    return inner.result(), a, time.time(), None
                finally:
                    leave(st.name)
            workers = 2 if st.kind == "io" else 1
            gone = threading.Event()  # set by the watchdog: this call's rows have failed already
            lock = locks[key] if workers == 1 else contextlib.nullcontext()

            def timed() -> Call:
                # One call at a time per model and device, also across an abandoned thread and its
                # replacement; a call given up while it waited does not run at all.
                with lock:
                    if gone.is_set():
                        a = time.time()
                        return [], a, a, None
                    return call_sync(st, rows, wctx)

            fut = pool(key, workers).submit(timed)
            try:  # measured on the worker thread: queueing behind another stage is not busy time
                out, a, b, failed = await asyncio.wait_for(asyncio.wrap_future(fut), watchdog)
            except asyncio.TimeoutError:
                # the thread cannot be stopped: it is abandoned, later calls get a fresh one
                gone.set()
                stuck = pools.pop(key, None)
                if stuck is not None:
                    stuck.shutdown(wait=False)
                raise
            busy[st.name] += b - a
            return out, a, b, failed

        return run

    def handoff(st: Stage, nxt: asyncio.Queue):
        def deliver(out: list[Row], called: bool) -> None:
            if called and hooks.on_stage is not None:
                hooks.on_stage(st.name, out)
            for r in out:
                nxt.put_nowait(r)
        return deliver

    async def worker(i: int, st: Stage, wctx: Ctx, key: str) -> None:
        n = max(1, st.batch_size(cfg))
        run, deliver = runner(key), handoff(st, queues[i + 1])
        while True:
            batch = await take(i, st, n)
            if not batch:
                continue
            call = run_stage(st, batch, wctx, key, run, deliver)
            if st.kind == "lmm":  # keeps taking rows while this call is in flight
                spawn(call)
            else:
                await call

    async def writer() -> None:
        while True:
            r = await queues[-1].get()
            try:
                await loop.run_in_executor(pool("write"), sink, r)
            except Exception as e:
                abort.append(e)
                finished.set()
                return
            state["written"] += 1
            slots.release()
            if state["fed"] and state["written"] == state["admitted"]:
                finished.set()

    lmm = ctx.models.lmm if ctx.models is not None and any(st.kind == "lmm" for st in stages) else None

    async def admit(r: Row) -> bool:
        await slots.acquire()
        if abort:
            return False
        dead = engine_dead(lmm)
        if dead:  # the LMM engine died: the rows in flight finish (or fail), no new row starts
            slots.release()
            state["dead"] = dead
            return False
        state["admitted"] += 1
        if ctx.trace is not None:
            ctx.trace.admitted(r)
        queues[0].put_nowait(r if r.admitted else r.replace(admitted=time.time()))
        return True

    async def feed() -> None:
        if hasattr(source, "__aiter__"):
            async for r in source:
                if not await admit(r):
                    break
        else:
            for r in source:
                if not await admit(r):
                    break
        if abort:
            return
        state["fed"] = True
        if state["written"] == state["admitted"]:
            finished.set()

    hooks.queues.update({st.name: work[i] for i, st in enumerate(stages)})
    for i, st in enumerate(stages):
        spawn(route(i, st))
        if st.slot == "generators" and ctx.models.generators:
            for g in ctx.models.generators:
                if ctx.trace is not None:
                    ctx.trace.instrument(g, f"generators-{_device(g)}")
                spawn(worker(i, st, ctx.on(g), f"generators-{_device(g)}"))
        else:
            key = {"io": "io", "lmm": "lmm"}.get(st.kind, f"{st.slot or 'dense'}-{cfg.rank.device}")
            spawn(worker(i, st, ctx, key))
    spawn(writer())
    spawn(feed())
    if ctx.trace is not None:
        from kbridge.engine.trace.counters import sample

        spawn(sample(ctx.trace, hooks.queues, lambda: state["admitted"] - state["written"]))
    try:
        await finished.wait()
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ctx.pools is None:
            for p in pools.values():
                p.shutdown(wait=True)
    if abort:
        raise abort[0]
    if state.get("dead"):
        raise LMMEngineDied(state["dead"], state["admitted"])
    return state["admitted"]


# ---- the run driver: kbridge run's stages through ``stream``, fused or phase by phase ----------

def manifest(cfg, address: str | None) -> dict:
    """What the run's manifest records about this executor (nothing: it runs in this process)."""
    return {}


def execute(eng, store, ds, todo: list[int], schedule: str, report, t_start: float, on_sample,
            address: str | None = None) -> None:
    """Run ``todo`` through the stage graph with ``eng.executor`` (``stream``): the whole graph at
    once (fused), or ``PHASES`` one after another with each row persisted between them (phased).
    Every finished row goes to the run's sink."""
    from kbridge.engine.executors.phased import PhaseFiles
    from kbridge.engine.executors.sink import ResultSink
    from kbridge.engine.stages import GRAPH, PHASES
    from kbridge.engine.types import Sample

    busy: dict = defaultdict(float)
    files = PhaseFiles(store.root)
    any_image = any(ds.missing.get(i) == "image" for i in todo)
    finish = ResultSink(store, report, t_start, on_sample, log.isEnabledFor(logging.DEBUG), eng.tracer)

    def persist(k: int):
        def sink(row: Row) -> None:
            if row.error is not None:
                finish(row)
            else:
                files.persist(k, row, store)
        return sink

    def fresh(skip: set[str]):
        for i in todo:
            sid = f"{ds.name}:{i}"
            if sid not in skip:
                yield Row(Sample(sid, i, None, None, ds.missing.get(i)))

    def slots(stages) -> set[str]:
        need = {s.slot for s in stages if s.slot}
        if not any_image:
            need.discard("generators")
        return need

    if schedule == "fused":
        ctx = eng.context(slots(GRAPH), store.root, store.cache, dataset=ds, trace=eng.tracer)
        try:
            asyncio.run(eng.executor(fresh(set()), GRAPH, ctx, finish, busy))
        except LMMEngineDied as e:  # what was written stays; the samples not started are left to a re-run
            report.stopped = e.reason
    else:
        last = len(PHASES) - 1
        pools: dict = {}  # one worker thread per device and model for the whole run, not per phase
        try:
            for k, names in enumerate(PHASES):
                stages = tuple(files.stage(n) for n in names)
                need = slots(stages)
                eng.release({"lmm", "scorer", "generators"} - need)  # what this phase does not use
                ctx = eng.context(need, store.root if "retrieve" in names else None, store.cache,
                                  dataset=ds, trace=eng.tracer, pools=pools)
                skip = files.done(k) | store.done()
                source = fresh(skip) if k == 0 else files.rows(k - 1, skip)
                try:
                    asyncio.run(eng.executor(source, stages, ctx, finish if k == last else persist(k), busy))
                except LMMEngineDied as e:  # later phases wait for a re-run; this phase's files stay
                    report.stopped = e.reason
                    break
                finally:  # the next phase's release must find no other reference to this phase's models
                    ctx = source = None
        finally:
            for p in pools.values():
                p.shutdown(wait=True)
        if not report.stopped:
            files.clear()
    finish.close(busy)
