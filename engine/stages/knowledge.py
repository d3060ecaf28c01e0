"""LMM stages that produce knowledge: the sample's (extract) and its candidates' (for graph ranking).

Each call logs into its own request log, so the rows get exactly their own request records
(tokens, turn, start and end), and advance their critical path to the latest turn they used.
"""
from __future__ import annotations

from dataclasses import replace

from kbridge.engine import faults
from kbridge.engine.domains import domain_of
from kbridge.engine.domains.lmm import by_turn, lmm_call
from kbridge.engine.rows import Row
from kbridge.engine.types import SampleError


async def extract(rows: list[Row], ctx) -> list[Row]:
    kns, recs = await lmm_call(ctx, lambda c: ctx.domain.extract(c, ctx.cfg, [r.sample for r in rows]))
    faults.check("extract")
    out = []
    for r, kn in zip(rows, kns):
        r = r.with_lmm(recs[r.sample_id])
        out.append(r.fail("extract", kn.message) if isinstance(kn, SampleError) else r.replace(knowledge=kn))
    return out


def _todo(row: Row, cfg, domain=None) -> list[int]:
    """Candidates that need triples: generated images (fast), written captions too when their
    triples are extracted (``[knowledge] caption_triples_from``), every generated one (reference)."""
    ref = cfg.run.fidelity == "reference"
    texts = cfg.knowledge.caption_triples_from == "extracted" and (domain or domain_of(cfg)).reextract_texts
    return [j for j, c in enumerate(row.candidates)
            if c.source == "generated" and not c.triples and (ref or c.image is not None or (texts and c.text))]


def needs_triples(row: Row, cfg) -> bool:
    return bool(_todo(row, cfg))


async def candidate_knowledge(rows: list[Row], ctx) -> list[Row]:
    out = list(rows)
    for (turn,), idx in by_turn(rows).items():
        items = [(i, j) for i in idx for j in _todo(rows[i], ctx.cfg, ctx.domain)]
        owners = [rows[i].sample_id for i, _ in items]
        cands = [rows[i].candidates[j] for i, j in items]
        found, recs = await lmm_call(ctx, lambda c: ctx.domain.candidate_triples(c, ctx.cfg, owners, cands, turn))
        new = {i: list(rows[i].candidates) for i in idx}
        errors: dict[int, SampleError] = {}
        for (i, j), t in zip(items, found):
            if isinstance(t, SampleError):
                errors.setdefault(i, t)
            else:
                new[i][j] = replace(new[i][j], triples=t)
        for i in idx:
            r = rows[i].with_lmm(recs[rows[i].sample_id])
            out[i] = r.fail("candidate_knowledge", errors[i].message) if i in errors else \
                r.replace(candidates=tuple(new[i]))
    return out
