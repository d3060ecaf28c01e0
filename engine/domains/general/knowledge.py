"""The general domain's knowledge extraction: one schema-guided call per sample (fast), or the
reference's 4-turn chain.

Also extracts the triples of generated image candidates for graph ranking, all candidates of a
batch in one LMM pass.
"""
from __future__ import annotations

from kbridge.engine.config import PipelineConfig
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.domains.lmm import parse_triples, per_sample
from kbridge.engine.lmm import LMMClient, build_request
from kbridge.engine.rank.graph import normalize_entity
from kbridge.engine.types import Candidate, Knowledge, ObjectInfo, Sample, SampleError, Triple


def parse_knowledge(record: dict, triples: list | None = None) -> Knowledge:
    """The record of a knowledge answer: objects as ``[name, count, [attributes]]`` tuples (fast
    fidelity, ``schemas.object_item``) or keyed objects (the reference chain) give the same record."""
    objs, seen = [], set()
    for o in record.get("objects", []):
        name, count, attrs = o if isinstance(o, (list, tuple)) else (o["name"], o.get("count", 1), o.get("attributes", []))
        name = str(name).strip()
        if normalize_entity(name) in seen:
            continue
        seen.add(normalize_entity(name))
        objs.append(ObjectInfo(name, int(count), [str(a) for a in attrs]))
    return Knowledge(objs, str(record.get("style", "")), parse_triples(record.get("triples") if triples is None
                                                                       else triples))


async def extract(client: LMMClient, cfg: PipelineConfig, samples: list[Sample]) -> list[Knowledge | SampleError]:
    """Knowledge of each sample's available modality."""
    k = cfg.knowledge
    if cfg.run.fidelity == "fast":
        reqs = [build_request(cfg, P.knowledge_fast(k, s.text, s.image), S.knowledge(k), s.sample_id, "extract", 1)
                for s in samples]
        return await per_sample(client, samples, reqs, "knowledge extraction", parse_knowledge)
    return await chain_extract(client, cfg, [(s.sample_id, "", s.text, s.image) for s in samples], "extract", 0)


async def chain_extract(client: LMMClient, cfg: PipelineConfig, items: list[tuple], stage: str,
                        turn0: int, temperature: float | None = None) -> list[Knowledge | SampleError]:
    """The reference's chain: describe → objects JSON → triples (image again) → triples JSON.
    ``items`` are (sample_id, tag, text, image); the tag (a candidate id) keeps seeds apart."""
    k = cfg.knowledge
    msgs = [P.chain_describe(k, t, im) for _, _, t, im in items]
    steps = [(None, True), (S.objects(k), False), (None, True), (S.triples(k), False)]
    answers: list[list] = [[] for _ in items]
    errors: dict[int, SampleError] = {}
    for turn, (schema, free) in enumerate(steps, start=1):
        live = [i for i in range(len(items)) if i not in errors]
        reqs = [build_request(cfg, msgs[i], schema, items[i][0], stage, turn0 + turn, items[i][1], free, temperature)
                for i in live]
        for i, r in zip(live, await client.complete(reqs)):
            if r.error:
                errors[i] = SampleError(items[i][0], f"{stage} turn {turn}: {r.error}")
                continue
            answers[i].append(r.parsed if schema else r.text)
            if turn < len(steps):
                follow = {1: P.CHAIN_OBJECTS, 2: P.chain_triples_ask(k, items[i][3]), 3: P.CHAIN_TRIPLES}[turn]
                msgs[i] = P.continue_chain(msgs[i], r.text, follow)
    out: list[Knowledge | SampleError] = []
    for i in range(len(items)):
        out.append(errors[i] if i in errors else parse_knowledge(answers[i][1], answers[i][3]["triples"]))
    return out


async def candidate_triples(client: LMMClient, cfg: PipelineConfig, owners: list[str],
                            cands: list[Candidate], turn: int) -> list[list[Triple] | SampleError]:
    """Triples of candidates: image candidates in fast mode (one request per candidate, all in one
    pass); every candidate through the full chain in reference mode. ``turn`` is the last turn
    already on the owner's critical path."""
    if not cands:
        return []
    temp = cfg.lmm.rank_temperature
    if cfg.run.fidelity == "reference":
        kns = await chain_extract(client, cfg, [(o, c.id, c.text, c.image) for o, c in zip(owners, cands)],
                                  "rank", turn, temp)
        return [kn if isinstance(kn, SampleError) else kn.triples for kn in kns]
    k = cfg.knowledge
    # generated images, and written captions when [knowledge] caption_triples_from = "extracted"
    reqs = [build_request(cfg, P.candidate_triples(k, c.image) if c.image is not None else P.caption_triples(k, c.text),
                          S.triple_list(k), o, "rank", turn + 1, c.id, temperature=temp) for o, c in zip(owners, cands)]
    return [SampleError(o, f"candidate {c.id} triples: {r.error}") if r.error else parse_triples(r.parsed)
            for o, c, r in zip(owners, cands, await client.complete(reqs))]
