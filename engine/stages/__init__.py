"""The stage graph: load → extract → write → render → candidate_knowledge → retrieve → rank.

A stage is a plain function ``(rows, ctx) -> rows`` (``async`` when it calls the LMM) with
declared needs: the model slot it uses (and so where it runs, ``kind``: the LMM, a dense-model
worker per device, or the I/O thread), which rows it applies to, and its preferred micro-batch
size. Rows that a stage does not apply to, or that already failed, pass it untouched. Stages own
their turn numbers and counts (both travel in the rows); the executor owns none of that bookkeeping.

``run_stage`` is the one way any executor calls a stage (the local streaming executor, the Ray
actors, the barrier benchmark): pass-through, micro-batches, one call per row for a continuously
batching LMM backend, failures captured with their traceback, timing and the trace hook.

``PHASES`` groups the stages for the phased schedule: the LMM (extract + write), diffusion
(render), the LMM again (candidate knowledge), then ranking.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

from kbridge.engine.config import PipelineConfig
from kbridge.engine.rows import Row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ctx:
    """What a stage call may use: the configuration, the domain entry, the loaded models, the LMM
    client, the dataset (for loading), the generator replica of this render worker, and
    ``cancelled(row)`` (a served request given up: long work checks it between steps)."""

    cfg: PipelineConfig
    domain: object
    models: object
    client: object = None
    dataset: object = None
    generator: object = None
    cancelled: Callable[[Row], bool] | None = None
    pools: dict | None = None
    """Worker threads kept across the executor calls of one run (the phased schedule's phases):
    key → ThreadPoolExecutor, shut down by the run. None: each call makes and ends its own."""
    trace: object = None
    """With ``--trace``: what records each stage call, ``call(stage, worker, rows_in, rows_out, a,
    b) -> rows_out`` (the run's ``engine.trace.Tracer``, or in a Ray actor a recorder that puts the
    call in its rows), else None."""

    def on(self, generator) -> "Ctx":
        return replace(self, generator=generator)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable
    slot: str | None
    """Model slot the stage needs loaded: "lmm", "generators", "scorer", or None."""
    applies: Callable[[Row, PipelineConfig], bool]
    batch_size: Callable[[PipelineConfig], int]

    @property
    def kind(self) -> str:
        """"lmm" (async; the LMM backend batches), "dense" (a worker thread per device), "io"."""
        return "io" if self.slot is None else "lmm" if self.slot == "lmm" else "dense"


def _graph() -> tuple[Stage, ...]:
    from kbridge.engine.stages import knowledge, load, rank, render, write

    run_bs = lambda cfg: cfg.run.batch_size  # noqa: E731
    dense_bs = lambda cfg: cfg.run.dense_rows  # noqa: E731
    return (
        Stage("load", load.load, None, load.needs_load, lambda cfg: 1),
        Stage("extract", knowledge.extract, "lmm", lambda r, cfg: r.knowledge is None, run_bs),
        Stage("write", write.write, "lmm", lambda r, cfg: not r.candidates, run_bs),
        Stage("render", render.render, "generators", render.needs_render, dense_bs),
        Stage("candidate_knowledge", knowledge.candidate_knowledge, "lmm", knowledge.needs_triples, run_bs),
        Stage("retrieve", rank.retrieve, "scorer", rank.needs_retrieval, dense_bs),
        Stage("rank", rank.rank, "scorer", lambda r, cfg: r.best is None, dense_bs),
    )


GRAPH = _graph()
STAGES = {s.name: s for s in GRAPH}
PHASES: tuple[tuple[str, ...], ...] = (
    ("load", "extract", "write"),
    ("render",),
    ("load", "candidate_knowledge"),
    ("load", "retrieve", "rank"),
)
"""The phased schedule's stage groups, in order; ``load`` decodes again what the previous phase
persisted (the sample's image, candidate PNGs) for the stages of this one."""


# ---- calling a stage -----------------------------------------------------------------------------

WATCHDOG = "(run.stage_timeout_s)"
"""In the message of a row failed by the watchdog."""

Call = tuple[list[Row] | None, float, float, tuple[BaseException, str] | None]
"""What running one stage call gives: (output rows, start, end, (exception, traceback) or None)."""


def passes(st: Stage, r: Row, cfg: PipelineConfig) -> bool:
    """``r`` goes past ``st`` untouched: it failed already, or the stage does not apply to it (as
    judged by the row's own configuration, a served request's overrides)."""
    return r.error is not None or not st.applies(r, r.cfg or cfg)


def calls(st: Stage, rows: list[Row], ctx: Ctx, batch: int | None = None) -> list[tuple[Ctx, list[Row]]]:
    """The calls ``st`` makes for ``rows`` (all of which it applies to): micro-batches of its batch
    size (or ``batch``) of rows sharing one configuration, never two rows of one sample id in a
    call (LMM records are attributed by sample id), and for an LMM stage on a continuously
    batching backend one call per row (a slow answer then holds up only its own row)."""
    n = max(1, batch or st.batch_size(ctx.cfg))
    groups: dict = {}
    for r in rows:
        waves = groups.setdefault(r.cfg or ctx.cfg, [])
        for w in waves:
            if len(w) < n and all(x.sample_id != r.sample_id for x in w):
                w.append(r)
                break
        else:
            waves.append([r])
    lmm = ctx.models.lmm if ctx.models is not None else None
    per_row = st.kind == "lmm" and bool(getattr(lmm, "continuous_batching", False))
    out = []
    for c, waves in groups.items():
        cctx = ctx if c is ctx.cfg else replace(ctx, cfg=c)
        for w in waves:
            out += [(cctx, [r]) for r in w] if per_row else [(cctx, w)]
    return out


def failure(stage: str, e: BaseException, watchdog: float) -> str:
    """One clear line for a failed stage call (no reprs, no addresses)."""
    if isinstance(e, asyncio.TimeoutError):
        return f"{stage} did not return within {watchdog:g} s {WATCHDOG}; its rows were failed"
    msg = re.sub(r" (object )?at 0x[0-9a-fA-F]+", "", str(e).splitlines()[0] if str(e) else "")
    return f"internal error in {stage}: {type(e).__name__}" + (f": {msg}" if msg else "")


def call_sync(st: Stage, rows: list[Row], ctx: Ctx) -> Call:
    """A dense or I/O call on this thread. On a worker thread every exception comes back as a value
    (a StopIteration or a BaseException could not travel through a future, and its call would never
    resolve); on the main thread Ctrl-C and exit still stop the process."""
    a = time.time()
    try:
        return st.fn(rows, ctx), a, time.time(), None
    except (KeyboardInterrupt, SystemExit):
        if threading.current_thread() is threading.main_thread():
            raise
        return None, a, time.time(), (RuntimeError("interrupted"), traceback.format_exc())
    except BaseException as e:  # noqa: BLE001 - any failure of a call fails its rows, never the run
        return None, a, time.time(), (e, traceback.format_exc())


async def inline(st: Stage, rows: list[Row], ctx: Ctx) -> Call:
    """Run the call here: awaited when the stage is async (LMM), else on this thread."""
    if st.kind != "lmm":
        return call_sync(st, rows, ctx)
    a = time.time()
    try:
        out = await st.fn(rows, ctx)
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as e:  # noqa: BLE001 - any failure of a call fails its rows, never the run
        return None, a, time.time(), (e, traceback.format_exc())
    return out, a, time.time(), None


Runner = Callable[[Stage, list[Row], Ctx], Awaitable[Call]]


async def call_stage(st: Stage, rows: list[Row], ctx: Ctx, worker: str = "", run: Runner = inline) -> list[Row]:
    """One call of ``st`` on ``rows`` through ``run`` (how this executor runs a call: inline, on a
    worker thread, under a watchdog). An exception fails these rows with its traceback, "cancelled"
    when every row was given up; the rows get the call's timing, and the trace records it."""
    try:
        out, a, b, failed = await run(st, rows, ctx)
    except asyncio.CancelledError as e:
        if asyncio.current_task().cancelling():  # the executor is stopping
            raise
        out, a, b, failed = None, 0.0, 0.0, (e, traceback.format_exc())
    except (KeyboardInterrupt, SystemExit):  # the user stops the run
        raise
    except BaseException as e:  # noqa: BLE001 - a runner's own failure (the watchdog) fails the rows too
        out, a, b, failed = None, 0.0, 0.0, (e, traceback.format_exc())
    if failed is None and (out is None or len(out) != len(rows)):  # a stage must return one row per row
        failed = (RuntimeError(f"returned {0 if out is None else len(out)} rows for {len(rows)}"), "")
    if failed is not None:
        e, tb = failed
        log.debug("stage %s failed: %s", st.name, tb)
        a = b = time.time()
        dropped = ctx.cancelled is not None and all(ctx.cancelled(r) for r in rows)
        why = "cancelled" if dropped else failure(st.name, e, ctx.cfg.run.stage_timeout_s)
        out = [r.fail(st.name, why, "" if dropped else tb) for r in rows]
    out = [r.timed(st.name, a, b) for r in out]
    if ctx.trace is not None:
        out = ctx.trace.call(st.name, worker, rows, out, a, b)
    return out


async def run_stage(st: Stage, rows: list[Row], ctx: Ctx, worker: str = "", run: Runner = inline,
                    deliver: Callable[[list[Row], bool], None] | None = None, batch: int | None = None) -> list[Row]:
    """``st`` over ``rows``: the rows it passes go on untouched (``deliver(rows, False)`` at once),
    the others in its ``calls`` (LMM calls side by side, dense ones in turn), each call's rows
    handed to ``deliver(rows, True)`` the moment it returns. ``batch``: the micro-batch size instead
    of the stage's. Returns every row, in the order given."""
    out: dict[int, Row] = {}
    todo: list[Row] = []
    for r in rows:
        if passes(st, r, ctx.cfg):
            out[id(r)] = r
            if deliver is not None:
                deliver([r], False)
        else:
            todo.append(r)

    async def one(c: Ctx, group: list[Row]) -> None:
        done = await call_stage(st, group, c, worker, run)
        for r, o in zip(group, done):
            out[id(r)] = o
        if deliver is not None:
            deliver(done, True)

    parts = calls(st, todo, ctx, batch)
    if st.kind == "lmm":
        await asyncio.gather(*(one(c, g) for c, g in parts))
    else:
        for c, g in parts:
            await one(c, g)
    return [out[id(r)] for r in rows]
