"""The v0.1 scheduling pattern on today's stages, for the executor comparison in ``bench e2e``.

Samples go in fixed batches of ``run.batch_size``, at most two batches in flight, and every stage
is a barrier: a batch waits for its slowest member at extract, write, render, candidate knowledge
and rank before any of its samples moves on (what ``Scheduler.process`` did up to commit 9a800ef).
Dense stages share one worker thread, as they did. Unlike v0.1 it does not decode every image
before the first batch starts (that only cost memory, measured in ``bench scale``).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

from kbridge.engine.stages import Call, call_sync, inline, passes, run_stage


async def barrier(source, stages, ctx, sink, busy) -> int:
    cfg = ctx.cfg
    loop = asyncio.get_running_loop()
    dense = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbridge-v01-dense")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbridge-v01-write")
    gate = asyncio.Semaphore(2)
    it = iter(source)
    n = 0

    async def run(st, rows, c) -> Call:
        """A call awaited (LMM) or on the shared dense thread."""
        return await inline(st, rows, c) if st.kind == "lmm" else \
            await loop.run_in_executor(dense, call_sync, st, rows, c)

    async def one(batch):
        async with gate:
            t = time.time()
            rows = [r.replace(admitted=t) for r in batch]
            for st in stages:  # the whole batch in one call per stage: every stage a barrier
                if all(passes(st, r, cfg) for r in rows):
                    continue
                c = ctx.on(ctx.models.generators[0]) if st.slot == "generators" and ctx.models.generators else ctx
                a = time.time()
                rows = await run_stage(st, rows, c, run=run, batch=len(rows))
                busy[st.name] += time.time() - a
            for r in rows:
                await loop.run_in_executor(writer, sink, r)

    tasks = []
    while True:
        batch = list(itertools.islice(it, max(1, cfg.run.batch_size)))
        if not batch:
            break
        n += len(batch)
        tasks.append(asyncio.ensure_future(one(batch)))
    try:
        await asyncio.gather(*tasks)
    finally:
        dense.shutdown(wait=True)
        writer.shutdown(wait=True)
    return n
