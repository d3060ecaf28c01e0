"""What the LMM writes for a missing modality: diffusion prompts (image missing) or captions with
their own triples (text missing). Fast: one structured call per sample. Reference: the serial
scene → variants → per-variant compression chain, and captions re-extracted later for ranking."""
from __future__ import annotations

import re

from kbridge.engine.config import PipelineConfig
from kbridge.engine.extract import answer_of, parse_triples, per_sample
from kbridge.engine.lmm import LMMClient, build_request
from kbridge.engine.lmm import prompts as P
from kbridge.engine.lmm import schemas as S
from kbridge.engine.types import Candidate, Knowledge, Sample, SampleError, derive_seed


def clean_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def dedupe(texts: list[str]) -> list[str]:
    """Drop repeats but keep order (the reference's set() made order, and so output, random)."""
    seen, out = set(), []
    for t in texts:
        key = t.lower()
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


async def write_prompts(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                        knowledge: list[Knowledge], turn: int) -> list[list[str] | SampleError]:
    n, k = cfg.generation.candidates, cfg.knowledge
    if cfg.run.fidelity == "reference":
        return await _prompt_chain(client, cfg, samples, knowledge, turn)
    if cfg.knowledge.write == "parallel":
        from kbridge.engine.generate import parallel
        return await parallel.write_prompts(client, cfg, samples, knowledge, turn)
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
        from kbridge.engine.generate import parallel
        return await parallel.write_captions(client, cfg, samples, knowledge, turn, with_triples)
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


def text_candidates(items: list[dict], triples_of=lambda it: it.get("triples")) -> list[Candidate]:
    """Candidates from written texts (captions, reports): cleaned, repeats dropped, order kept,
    each with the triples the same answer gave for it."""
    cands, seen = [], set()
    for it in items:
        text = clean_text(it["text"])
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        cands.append(Candidate(id=f"c{len(cands)}", source="generated", text=text,
                               triples=parse_triples(triples_of(it))))
    return cands


def image_candidates(sample: Sample, prompts: list[str], root_seed: int) -> list[Candidate]:
    """One candidate per prompt with its own (sample, candidate) seed; images filled in later."""
    return [Candidate(id=f"c{j}", source="generated", prompt=p, seed=derive_seed(root_seed, sample.sample_id, "image", j))
            for j, p in enumerate(prompts)]
