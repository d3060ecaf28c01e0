"""What every domain's LMM functions and the LMM stages share: one call per stage with its own
request log (``lmm_call``), rows grouped by turn (``by_turn``), answers parsed per sample or
its ``SampleError`` (``answer_of``, ``per_sample``, ``fan_out``), and the generic pieces of an
answer: triples (schema and parser), cleaned and de-duplicated texts, text candidates.
"""
from __future__ import annotations

import re
from collections import defaultdict

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.lmm import LMMClient, Request, RequestLog
from kbridge.engine.lmm.grammar import text
from kbridge.engine.rank.graph import normalize_entity
from kbridge.engine.rows import LMMRecord, Row
from kbridge.engine.types import Candidate, Sample, SampleError, Triple


async def lmm_call(ctx, call):
    """Run ``call(client)`` with a fresh request log; returns (its result, records per sample id)."""
    log = RequestLog()
    result = await call(ctx.client.using(log))
    recs: dict[str, list[LMMRecord]] = defaultdict(list)
    for r in log.records:
        recs[r["sample_id"]].append(LMMRecord(r["stage"], r["turn"], r["prompt_tokens"], r["generated_tokens"],
                                              r["cached"], r["start"], r["end"], r.get("engine") or None))
    return result, recs


def by_turn(rows: list[Row], key=lambda r: ()) -> dict[tuple, list[int]]:
    """Row positions grouped by (their critical-path turn, key): one LMM call per group."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r.turn, *key(r))].append(i)
    return dict(sorted(groups.items()))


def answer_of(resp, sid: str, what: str):
    """The parsed answer, or the sample's SampleError naming what failed."""
    if resp.error:
        raise SampleError(sid, f"{what}: {resp.error}")
    return resp.parsed


async def per_sample(client: LMMClient, samples: list[Sample], reqs: list[Request], what: str, parse) -> list:
    """One request per sample: each answer parsed, or that sample's SampleError."""
    out = []
    for s, r in zip(samples, await client.complete(reqs)):
        try:
            out.append(parse(answer_of(r, s.sample_id, what)))
        except SampleError as e:
            out.append(e)
    return out


async def fan_out(client: LMMClient, samples: list[Sample], reqs_of, what: str, parse) -> list:
    """n requests per sample (``reqs_of(sample, i)``) in one call; each sample's n answers parsed
    together, or its SampleError."""
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


def triple(k: KnowledgeConfig) -> dict:
    """One fact as a ``[head, relation, tail]`` tuple: the three strings and nothing else. The
    object form (``{"head": …, "relation": …, "tail": …}``) spends about a third of a triple's
    generated tokens on its keys (22 vs 15 tokens for one short triple with the twin's
    tokenizer); ``parse_triples`` reads both into the same records."""
    name = text(k.name_chars)
    return {"type": "array", "prefixItems": [name, text(max(8, k.name_chars * 3 // 4)), name], "items": False,
            "minItems": 3, "maxItems": 3}


def parse_triples(items) -> list[Triple]:
    """Triples from an answer, ``[head, relation, tail]`` tuples (``triple``) or objects with
    those keys, with duplicates (after normalisation) dropped, order kept."""
    out, seen = [], set()
    for t in items or []:
        h, r, tl = t if isinstance(t, (list, tuple)) else (t["head"], t["relation"], t["tail"])
        tr = Triple(str(h).strip(), str(r).strip(), str(tl).strip())
        key = (normalize_entity(tr.head), tr.relation.lower(), normalize_entity(tr.tail))
        if key not in seen:
            seen.add(key)
            out.append(tr)
    return out


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


def text_candidates(items: list[dict], triples_of=lambda it: it.get("triples")) -> list[Candidate]:
    """Candidates from written texts (captions, reports): cleaned, repeats dropped, order kept,
    each with the triples the same answer gave for it."""
    cands, seen = [], set()
    for it in items:
        body = clean_text(it["text"])
        if body.lower() in seen:
            continue
        seen.add(body.lower())
        cands.append(Candidate(id=f"c{len(cands)}", source="generated", text=body,
                               triples=parse_triples(triples_of(it))))
    return cands
