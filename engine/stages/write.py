"""Write: what the LMM writes for the missing modality. Image missing: one conditioning text per
candidate image (prompts, or reports for X-rays), each candidate with its own seed. Text missing:
text candidates (captions or reports), each with the triples its answer gave."""
from __future__ import annotations

from kbridge.engine.domains.lmm import by_turn, lmm_call
from kbridge.engine.rows import Row
from kbridge.engine.types import Candidate, Sample, SampleError, derive_seed


def image_candidates(sample: Sample, prompts: list[str], root_seed: int) -> list[Candidate]:
    """One candidate per prompt with its own (sample, candidate) seed; images filled in later."""
    return [Candidate(id=f"c{j}", source="generated", prompt=p, seed=derive_seed(root_seed, sample.sample_id, "image", j))
            for j, p in enumerate(prompts)]


async def write(rows: list[Row], ctx) -> list[Row]:
    cfg, dom = ctx.cfg, ctx.domain
    out = list(rows)
    for (turn, missing), idx in by_turn(rows, key=lambda r: (r.missing,)).items():
        samples = [rows[i].sample for i in idx]
        kns = [rows[i].knowledge for i in idx]
        fn = dom.write_prompts if missing == "image" else dom.write_captions
        answers, recs = await lmm_call(ctx, lambda c: fn(c, cfg, samples, kns, turn + 1))
        for i, a in zip(idx, answers):
            r = rows[i].with_lmm(recs[rows[i].sample_id])
            if isinstance(a, SampleError):
                out[i] = r.fail("write", a.message)
            else:
                cands = image_candidates(r.sample, a, cfg.run.seed) if missing == "image" else a
                out[i] = r.replace(candidates=tuple(cands))
    return out
