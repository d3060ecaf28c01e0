"""Knowledge extraction: one schema-guided call per sample (fast), or the reference's 4-turn chain.

Also extracts the triples of generated image candidates for graph ranking, all candidates of a
batch in one LMM pass.
"""
from __future__ import annotations

from kbridge.engine.config import PipelineConfig
from kbridge.engine.lmm import LMMClient, Request
from kbridge.engine.lmm import prompts as P
from kbridge.engine.lmm import schemas as S
from kbridge.engine.rank.graph import normalize_entity
from kbridge.engine.types import Candidate, Knowledge, ObjectInfo, Sample, SampleError, Triple, derive_seed


def parse_triples(items) -> list[Triple]:
    """Triples from an answer, with duplicates (after normalisation) dropped, order kept."""
    out, seen = [], set()
    for t in items or []:
        tr = Triple(str(t["head"]).strip(), str(t["relation"]).strip(), str(t["tail"]).strip())
        key = (normalize_entity(tr.head), tr.relation.lower(), normalize_entity(tr.tail))
        if key not in seen:
            seen.add(key)
            out.append(tr)
    return out


def parse_knowledge(record: dict, triples: list | None = None) -> Knowledge:
    objs, seen = [], set()
    for o in record.get("objects", []):
        name = str(o["name"]).strip()
        if normalize_entity(name) in seen:
            continue
        seen.add(normalize_entity(name))
        objs.append(ObjectInfo(name, int(o.get("count", 1)), [str(a) for a in o.get("attributes", [])]))
    return Knowledge(objs, str(record.get("style", "")), parse_triples(record.get("triples") if triples is None
                                                                       else triples))


def _req(cfg: PipelineConfig, msgs, schema, sample_id: str, stage: str, turn: int, tag: object = "",
         free: bool = False, temperature: float | None = None) -> Request:
    lm = cfg.lmm
    # the seed depends on what the request is for, never on its position in a batch
    return Request(msgs, schema, derive_seed(cfg.run.seed, sample_id, stage, turn, tag),
                   lm.free_text_tokens if free else (S.max_chars(schema) or lm.max_new_tokens) + 8,
                   lm.temperature if temperature is None else temperature, sample_id, stage, turn)


def _check(resp, sid: str, what: str):
    if resp.error:
        raise SampleError(sid, f"{what}: {resp.error}")
    return resp.parsed


async def per_sample(client: LMMClient, samples: list[Sample], reqs: list[Request], what: str, parse) -> list:
    """One request per sample: each answer parsed, or that sample's SampleError."""
    out = []
    for s, r in zip(samples, await client.complete(reqs)):
        try:
            out.append(parse(_check(r, s.sample_id, what)))
        except SampleError as e:
            out.append(e)
    return out


async def extract(client: LMMClient, cfg: PipelineConfig, samples: list[Sample]) -> list[Knowledge | SampleError]:
    """Knowledge of each sample's available modality."""
    if cfg.run.domain == "medical":
        from kbridge.engine import med_stages

        return await med_stages.extract(client, cfg, samples)
    k = cfg.knowledge
    if cfg.run.fidelity == "fast":
        reqs = [_req(cfg, P.knowledge_fast(k, s.text, s.image), S.knowledge(k), s.sample_id, "extract", 1)
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
        reqs = [_req(cfg, msgs[i], schema, items[i][0], stage, turn0 + turn, items[i][1], free, temperature)
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
                            cands: list[Candidate], turn: int) -> list[SampleError | None]:
    """Fill ``triples`` of candidates in place: image candidates in fast mode (one request per
    candidate, all in one pass); every candidate through the full chain in reference mode."""
    if not cands:
        return []
    if cfg.run.domain == "medical":
        from kbridge.engine import med_stages

        return await med_stages.candidate_triples(client, cfg, owners, cands, turn)
    temp = cfg.lmm.rank_temperature
    if cfg.run.fidelity == "reference":
        kns = await chain_extract(client, cfg, [(o, c.id, c.text, c.image) for o, c in zip(owners, cands)],
                                  "rank", turn - 1, temp)
        res = []
        for c, kn in zip(cands, kns):
            if isinstance(kn, SampleError):
                res.append(kn)
            else:
                c.triples = kn.triples
                res.append(None)
        return res
    k = cfg.knowledge
    reqs = [_req(cfg, P.candidate_triples(k, c.image), S.triples(k), o, "rank", turn, c.id, temperature=temp)
            for o, c in zip(owners, cands)]
    res = []
    for o, c, r in zip(owners, cands, await client.complete(reqs)):
        if r.error:
            res.append(SampleError(o, f"candidate {c.id} triples: {r.error}"))
        else:
            c.triples = parse_triples(r.parsed["triples"])
            res.append(None)
    return res
