"""The stage graph: load → extract → write → render → candidate_knowledge → retrieve → rank.

A stage is a plain function ``(rows, ctx) -> rows`` (``async`` when it calls the LMM) with
declared needs: the model slot it uses, where it runs (``kind``: the LMM, a dense-model worker
per device, or the I/O thread), which rows it applies to, and its preferred micro-batch size.
Rows that a stage does not apply to, or that already failed, pass it untouched. Stages own their
turn numbers and counts (both travel in the rows); the executor owns none of that bookkeeping.

``PHASES`` groups the stages for the phased schedule: the LMM (extract + write), diffusion
(render), the LMM again (candidate knowledge), then ranking.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from kbridge.engine.config import PipelineConfig
from kbridge.engine.rows import Row


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
    """The run's ``engine.trace.Tracer`` with ``--trace`` (the executor records spans), else None."""

    def on(self, generator) -> "Ctx":
        return replace(self, generator=generator)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable
    kind: str
    """"lmm" (async; the LMM backend batches), "dense" (a worker thread per device), "io"."""
    slot: str | None
    """Model slot the stage needs loaded: "lmm", "generators", "scorer", or None."""
    applies: Callable[[Row, PipelineConfig], bool]
    batch_size: Callable[[PipelineConfig], int]


def _graph() -> tuple[Stage, ...]:
    from kbridge.engine.stages import knowledge, load, rank, render, write

    run_bs = lambda cfg: cfg.run.batch_size  # noqa: E731
    dense_bs = lambda cfg: cfg.run.dense_rows  # noqa: E731
    return (
        Stage("load", load.load, "io", None, load.needs_load, lambda cfg: 1),
        Stage("extract", knowledge.extract, "lmm", "lmm", lambda r, cfg: r.knowledge is None, run_bs),
        Stage("write", write.write, "lmm", "lmm", lambda r, cfg: not r.candidates, run_bs),
        Stage("render", render.render, "dense", "generators", render.needs_render, dense_bs),
        Stage("candidate_knowledge", knowledge.candidate_knowledge, "lmm", "lmm", knowledge.needs_triples, run_bs),
        Stage("retrieve", rank.retrieve, "dense", "scorer", rank.needs_retrieval, dense_bs),
        Stage("rank", rank.rank, "dense", "scorer", lambda r, cfg: r.best is None, dense_bs),
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
