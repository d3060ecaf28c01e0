"""What the LMM writes for a missing modality in the general domain: diffusion prompts (image
missing) or captions with their own triples (text missing).

- Fast, joint (``[knowledge] write = "joint"``): one structured call per sample holding all N.
- Fast, parallel (``write = "parallel"``, the default): the N prompts or N captions of a sample as
  N independent sequences that share one prompt prefix. On a GPU the N sequences decode side by
  side, so the sample's critical path holds one candidate's tokens instead of N candidates'
  (PERFORMANCE.md: decode is memory-bound). Each sequence is told which candidate it writes (j of
  N) and a distinct angle, and has its own seed (the request tag j), so the N answers differ as
  the joint answer's items do.
- Reference: the serial scene → variants → per-variant compression chain, and captions
  re-extracted later for ranking.
"""
from __future__ import annotations

from kbridge.engine.config import PipelineConfig
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.domains.lmm import answer_of, clean_text, dedupe, fan_out, per_sample, text_candidates
from kbridge.engine.lmm import LMMClient, build_request
from kbridge.engine.types import Candidate, Knowledge, Sample, SampleError


async def write_prompts(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                        knowledge: list[Knowledge], turn: int) -> list[list[str] | SampleError]:
    n, k = cfg.generation.candidates, cfg.knowledge
    if cfg.run.fidelity == "reference":
        return await _prompt_chain(client, cfg, samples, knowledge, turn)
    if cfg.knowledge.write == "parallel":
        return await fan_out(client, samples, lambda s, i: [
            build_request(cfg, P.prompt_one(k, n, j, s.text, knowledge[i]), S.prompt_text(k), s.sample_id,
                          "generate", turn, j) for j in range(n)],
            "prompt writing", lambda answers: dedupe([clean_text(a) for a in answers]))
    reqs = [build_request(cfg, P.prompts_fast(k, n, s.text, kn), S.prompts(k, n), s.sample_id, "generate", turn)
            for s, kn in zip(samples, knowledge)]
    return await per_sample(client, samples, reqs, "prompt writing",
                            lambda a: dedupe([clean_text(p) for p in a["prompts"]]))


async def _prompt_chain(client, cfg, samples, knowledge, turn) -> list[list[str] | SampleError]:
    """Turn ``turn``: a scene paragraph (context only); turns ``turn + 1 .. turn + n``: the first
    description, then n - 1 variants, each seeing the ones before; turn ``turn + n + 1``: n
    independent compressions into prompts."""
    n, k = cfg.generation.candidates, cfg.knowledge
    msgs = [P.chain_scene(k, s.text, kn) for s, kn in zip(samples, knowledge)]
    descs: list[list[str]] = [[] for _ in samples]
    failed: dict[int, SampleError] = {}  # a failed free-text turn (server down) fails its sample
    for j in range(n + 1):  # free text: the scene, then the n descriptions
        reqs = [build_request(cfg, m, None, s.sample_id, "generate", turn + j, j, free=True) for s, m in zip(samples, msgs)]
        for i, r in enumerate(await client.complete(reqs)):
            if r.error and i not in failed:
                failed[i] = SampleError(samples[i].sample_id, f"scene description turn {j + 1}: {r.error}")
            if j:
                descs[i].append(r.text)
            msgs[i] = P.continue_chain(msgs[i], r.text, P.CHAIN_VARIANT if j else P.CHAIN_FIRST)
    # n independent compression calls per sample, all on the same (last) turn
    reqs = [build_request(cfg, P.chain_compress(k, d), S.prompt(k), s.sample_id, "generate", turn + n + 1, j)
            for s, ds in zip(samples, descs) for j, d in enumerate(ds)]
    resps = await client.complete(reqs)
    out: list[list[str] | SampleError] = []
    for i, s in enumerate(samples):
        mine = resps[i * n:(i + 1) * n]
        if i in failed:
            out.append(failed[i])
            continue
        try:
            out.append(dedupe([clean_text(answer_of(r, s.sample_id, "prompt compression")["prompt"]) for r in mine]))
        except SampleError as e:
            out.append(e)
    return out


async def write_captions(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                         knowledge: list[Knowledge], turn: int) -> list[list[Candidate] | SampleError]:
    n, k = cfg.generation.candidates, cfg.knowledge
    with_triples = cfg.run.fidelity == "fast" and k.caption_triples_from == "self"
    if cfg.run.fidelity == "reference":
        return await _caption_chain(client, cfg, samples, knowledge, turn)
    if cfg.knowledge.write == "parallel":
        one = S.caption(k, with_triples)
        return await fan_out(client, samples, lambda s, i: [
            build_request(cfg, P.caption_one(k, n, j, s.image, knowledge[i], with_triples), one, s.sample_id,
                          "generate", turn, j) for j in range(n)], "caption writing",
            lambda answers: text_candidates([caption_item(a) for a in answers]))
    reqs = [build_request(cfg, P.captions_fast(k, n, s.image, kn, with_triples), S.captions(k, n, with_triples), s.sample_id,
                 "generate", turn) for s, kn in zip(samples, knowledge)]
    return await per_sample(client, samples, reqs, "caption writing", lambda a: text_candidates(a["captions"]))


async def _caption_chain(client, cfg, samples, knowledge, turn) -> list[list[Candidate] | SampleError]:
    """Turn ``turn``: a free-text description of the image; turn ``turn + 1``: the captions, after it
    (their triples come later, from the candidates' own re-extraction)."""
    n, k = cfg.generation.candidates, cfg.knowledge
    msgs = [P.chain_describe(k, None, s.image) for s in samples]
    reqs = [build_request(cfg, m, None, s.sample_id, "generate", turn, "describe", free=True) for s, m in zip(samples, msgs)]
    described = await client.complete(reqs)
    reqs = [build_request(cfg, P.continue_chain(m, d.text, P.captions_fast(k, n, s.image, kn, False)[-1]),
                          S.captions(k, n, False), s.sample_id, "generate", turn + 1)
            for s, kn, m, d in zip(samples, knowledge, msgs, described)]
    out = await per_sample(client, samples, reqs, "caption writing", lambda a: text_candidates(a["captions"]))
    return [SampleError(s.sample_id, f"image description turn: {d.error}") if d.error else o
            for s, d, o in zip(samples, described, out)]


def caption_item(answer) -> dict:
    """A parallel caption answer (a bare string, or ``[text, [triples]]``, ``schemas.caption``) as
    the joint answer's item ``{"text", "triples"}``."""
    if isinstance(answer, str):
        return {"text": answer}
    return {"text": answer[0], "triples": answer[1]}
