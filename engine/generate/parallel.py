"""Parallel writing (``[knowledge] write = "parallel"``): the N prompts or N captions of a sample
as N independent sequences that share one prompt prefix, instead of one answer holding all N.

On a GPU the N sequences decode side by side, so the sample's critical path holds one
candidate's tokens instead of N candidates' (PERFORMANCE.md: decode is memory-bound). Each
sequence is told which candidate it writes (j of N) and a distinct angle, and has its own seed
(the request tag j), so the N answers differ as the joint answer's items do.
"""
from __future__ import annotations

from kbridge.engine.config import PipelineConfig
from kbridge.engine.extract import answer_of
from kbridge.engine.lmm import LMMClient, build_request
from kbridge.engine.lmm import prompts as P
from kbridge.engine.lmm import schemas as S
from kbridge.engine.types import Candidate, Knowledge, Sample, SampleError


def caption_schema(k, with_triples: bool) -> dict:
    """One caption: its text, and its facts when the writer reports them."""
    return S.captions(k, 1, with_triples)["properties"]["captions"]["items"]


async def _fan_out(client: LMMClient, samples: list[Sample], reqs_of, what: str, parse) -> list:
    """n requests per sample in one call; each sample's n answers parsed together, or its error."""
    per = [reqs_of(s, i) for i, s in enumerate(samples)]
    resps = await client.complete([r for rs in per for r in rs])
    out, at = [], 0
    for s, rs in zip(samples, per):
        mine, at = resps[at:at + len(rs)], at + len(rs)
        try:
            out.append(parse([answer_of(r, s.sample_id, what) for r in mine]))
        except SampleError as e:
            out.append(e)
    return out


async def write_prompts(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                        knowledge: list[Knowledge], turn: int) -> list[list[str] | SampleError]:
    from kbridge.engine.generate.text import clean_text, dedupe

    n, k = cfg.generation.candidates, cfg.knowledge
    return await _fan_out(client, samples, lambda s, i: [
        build_request(cfg, P.prompt_one(k, n, j, s.text, knowledge[i]), S.prompt(k), s.sample_id, "generate", turn, j)
        for j in range(n)], "prompt writing", lambda answers: dedupe([clean_text(a["prompt"]) for a in answers]))


async def write_captions(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                         knowledge: list[Knowledge], turn: int, with_triples: bool) -> list[list[Candidate] | SampleError]:
    from kbridge.engine.generate.text import text_candidates

    n, k = cfg.generation.candidates, cfg.knowledge
    schema = caption_schema(k, with_triples)
    return await _fan_out(client, samples, lambda s, i: [
        build_request(cfg, P.caption_one(k, n, j, s.image, knowledge[i], with_triples), schema, s.sample_id,
                      "generate", turn, j) for j in range(n)], "caption writing", text_candidates)
