"""The fused loop: batches of samples flow extract → write → render → candidate knowledge → rank.

Several batches are in flight at once (``run.batches_in_flight``): LMM calls go through the async
backend (which batches and, for servers, overlaps them), diffusion and CLIP run on one worker
thread, so while one batch renders the next one is already in the LMM. Stages are plain functions
of a batch; results are handed back per sample as each batch finishes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from kbridge.engine.config import PipelineConfig
from kbridge.engine.extract import candidate_triples, extract
from kbridge.engine.generate.text import image_candidates, write_captions, write_prompts
from kbridge.engine.lmm import LMMClient
from kbridge.engine.rank.score import rank_batch
from kbridge.engine.types import Sample, SampleError, SampleResult

log = logging.getLogger("kbridge.scheduler")


@dataclass
class Models:
    """Everything loaded once per process; ``diffusion`` is None when no sample lacks an image."""

    backend: object
    scorer: object
    diffusion: object | None = None


@dataclass
class StageClock:
    """Busy time per stage (summed over batches, so overlapping stages can exceed wall time)."""

    seconds: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, t0: float) -> None:
        self.seconds[stage] += time.perf_counter() - t0


def _render_counted(d, prompts: list[str], seeds: list[int]):
    """Render on the dense worker and read the counters there: another batch's render queued on
    the same worker must not be counted as this one's."""
    before = (d.counters.unet_evals, d.counters.vae_decodes)
    images = d.render(prompts, seeds)
    return images, (d.counters.unet_evals - before[0], d.counters.vae_decodes - before[1])


OnResult = Callable[[SampleResult, dict], None]
OnError = Callable[[str, str, str], None]


class Scheduler:
    def __init__(self, cfg: PipelineConfig, models: Models, client: LMMClient, on_result: OnResult,
                 on_error: OnError):
        self.cfg, self.models, self.client = cfg, models, client
        self.on_result, self.on_error = on_result, on_error
        self.clock = StageClock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbridge-dense")
        self.unet_evals: dict[str, float] = defaultdict(float)
        self.vae_decodes: dict[str, float] = defaultdict(float)

    async def _dense(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def _fail(self, err: SampleError, stage: str) -> None:
        self.on_error(err.sample_id, err.message, stage)

    async def process(self, batch: list[Sample]) -> None:
        cfg, c = self.cfg, self.client
        ref = cfg.run.fidelity == "reference"
        n = cfg.generation.candidates
        t0 = time.perf_counter()
        kns = await extract(c, cfg, batch)
        self.clock.add("extract", t0)
        live = []
        for s, kn in zip(batch, kns):
            if isinstance(kn, SampleError):
                self._fail(kn, "extract")
            else:
                live.append((s, kn))
        img = [(s, kn) for s, kn in live if s.missing == "image"]
        txt = [(s, kn) for s, kn in live if s.missing == "text"]
        gen_turn = 5 if ref else 2
        t0 = time.perf_counter()
        prompts, captions = await asyncio.gather(
            write_prompts(c, cfg, [s for s, _ in img], [k for _, k in img], gen_turn),
            write_captions(c, cfg, [s for s, _ in txt], [k for _, k in txt], gen_turn))
        self.clock.add("write", t0)
        cands: dict[str, list] = {}
        for (s, _), p in zip(img, prompts):
            if isinstance(p, SampleError):
                self._fail(p, "write")
            else:
                cands[s.sample_id] = image_candidates(s, p, cfg.run.seed)
        for (s, _), cs in zip(txt, captions):
            if isinstance(cs, SampleError):
                self._fail(cs, "write")
            else:
                cands[s.sample_id] = cs
        flat = [(s.sample_id, cd) for s, _ in img if s.sample_id in cands for cd in cands[s.sample_id]]
        if flat:
            t0 = time.perf_counter()
            images, used = await self._dense(_render_counted, self.models.diffusion, [cd.prompt for _, cd in flat],
                                             [cd.seed for _, cd in flat])
            per_image = [used[0] / len(flat), used[1] / len(flat)]
            for (sid, cd), im in zip(flat, images):
                cd.image = im
                self.unet_evals[sid] += per_image[0]
                self.vae_decodes[sid] += per_image[1]
            self.clock.add("render", t0)
        # candidate knowledge: image candidates (fast) or every candidate (reference chain)
        t0 = time.perf_counter()
        todo = [(sid, cd) for sid, cs in cands.items() for cd in cs if ref or cd.image is not None]
        turns = {s.sample_id: (gen_turn + (n + 1 if s.missing == "image" else 1) if ref else 3) for s, _ in live}
        failed = set()
        by_turn = defaultdict(list)
        for sid, cd in todo:
            by_turn[turns[sid]].append((sid, cd))
        for turn, items in sorted(by_turn.items()):
            errs = await candidate_triples(c, cfg, [sid for sid, _ in items], [cd for _, cd in items], turn)
            for (sid, _), e in zip(items, errs):
                if e is not None and sid not in failed:
                    failed.add(sid)
                    self._fail(e, "candidate_knowledge")
        if todo:
            self.clock.add("candidate_knowledge", t0)
        ranked = [(s, kn, cands[s.sample_id]) for s, kn in live if s.sample_id in cands and s.sample_id not in failed]
        if not ranked:
            return
        t0 = time.perf_counter()
        best = await self._dense(rank_batch, self.models.scorer, cfg.rank, [r[0] for r in ranked],
                                 [r[1] for r in ranked], [r[2] for r in ranked])
        self.clock.add("rank", t0)
        per_sample = c.log.per_sample()
        for (s, kn, cs), b in zip(ranked, best):
            counts = dict(per_sample.get(s.sample_id, {}))
            counts.update(unet_evals=round(self.unet_evals.get(s.sample_id, 0.0), 3),
                          vae_decodes=round(self.vae_decodes.get(s.sample_id, 0.0), 3))
            self.on_result(SampleResult(s, kn, cs, b), counts)

    async def run(self, batches: list[list[Sample]]) -> None:
        sem = asyncio.Semaphore(max(1, self.cfg.run.batches_in_flight))

        async def one(batch):
            async with sem:
                try:
                    await self.process(batch)
                except Exception as e:  # keep the run going; the batch's samples are reported
                    log.debug("batch failed", exc_info=True)
                    for s in batch:
                        self.on_error(s.sample_id, f"internal error: {type(e).__name__}: {e}", "batch")

        try:
            await asyncio.gather(*(one(b) for b in batches))
        finally:
            self.worker.shutdown(wait=True)
