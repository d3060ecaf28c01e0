"""Retrieve and rank: retrieved candidates from the run's corpus index join the generated ones,
then every candidate is scored (semantic + graph) and the best is chosen, a whole micro-batch
through the scorer's towers at once."""
from __future__ import annotations

from kbridge.engine.rank.score import rank_batch
from kbridge.engine.rows import Row


def needs_retrieval(row: Row, cfg=None) -> bool:
    return not any(c.source == "retrieved" for c in row.candidates) and not row.retrieved


def retrieve(rows: list[Row], ctx) -> list[Row]:
    ret = ctx.models.retriever
    if ret is None:
        return rows
    found = ret.candidates(ctx.models.scorer, [r.sample for r in rows], [r.knowledge for r in rows])
    return [r.replace(candidates=r.candidates + tuple(more), retrieved=True)
            for r, more in zip(rows, found)]


def rank(rows: list[Row], ctx) -> list[Row]:
    scored, best = rank_batch(ctx.models.scorer, ctx.cfg.rank, [r.sample for r in rows],
                              [r.knowledge for r in rows], [list(r.candidates) for r in rows])
    return [r.replace(candidates=tuple(cs), best=b) for r, cs, b in zip(rows, scored, best)]
