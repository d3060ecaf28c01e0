"""The chest-X-ray domain's LMM functions, with the signatures of the general ones (the Domain
table in engine/domains/__init__.py picks these for ``run.domain = "chest_xray"``).

One structured analysis per sample (few-shot prefix + the sample), one call writing every
candidate report, and for generated X-rays one batched analysis pass whose triples (the model's
plus those implied by the structured fields) feed graph ranking.
"""
from __future__ import annotations

from kbridge.engine.config import PipelineConfig
from kbridge.engine.domains.chest_xray import prompts as MP
from kbridge.engine.domains.chest_xray import schemas as MS
from kbridge.engine.domains.chest_xray.record import knowledge_from_record, load_few_shot
from kbridge.engine.domains.lmm import clean_text, dedupe, per_sample, text_candidates
from kbridge.engine.lmm import LMMClient, build_request
from kbridge.engine.types import Candidate, Knowledge, Sample, SampleError, Triple


def _examples(cfg: PipelineConfig) -> list[dict]:
    return load_few_shot(cfg.medical.few_shot, cfg.medical.few_shot_count)


async def extract(client: LMMClient, cfg: PipelineConfig, samples: list[Sample]) -> list[Knowledge | SampleError]:
    ex, k = _examples(cfg), cfg.knowledge
    reqs = [build_request(cfg, MP.analysis(k, ex, s.text, s.image), MS.record(k), s.sample_id, "extract", 1) for s in samples]
    return await per_sample(client, samples, reqs, "medical analysis", knowledge_from_record)


async def write_reports(client: LMMClient, cfg: PipelineConfig, samples: list[Sample], knowledge: list[Knowledge],
                        turn: int) -> list[list[str] | SampleError]:
    """Image missing: N reports, each the conditioning text of one generated X-ray."""
    ex, n, w = _examples(cfg), cfg.generation.candidates, cfg.medical.report_words
    reqs = [build_request(cfg, MP.reports_for_images(ex, n, w, s.text, kn), MS.reports(n, w), s.sample_id, "generate", turn)
            for s, kn in zip(samples, knowledge)]
    return await per_sample(client, samples, reqs, "report writing",
                            lambda a: dedupe([clean_text(t) for t in a["reports"]]))


async def write_report_candidates(client: LMMClient, cfg: PipelineConfig, samples: list[Sample],
                                  knowledge: list[Knowledge], turn: int) -> list[list[Candidate] | SampleError]:
    """Text missing: N reports, each carrying its diagnoses and triples (no re-extraction needed)."""
    ex, k, n, w = _examples(cfg), cfg.knowledge, cfg.generation.candidates, cfg.medical.report_words
    reqs = [build_request(cfg, MP.reports_for_text(k, ex, n, w, s.image, kn), MS.report_candidates(k, n, w), s.sample_id,
                 "generate", turn) for s, kn in zip(samples, knowledge)]
    # the diagnoses a report names are edges of its graph too
    def triples_of(it):
        return [Triple("chest x-ray", "suggests", str(d)).as_dict() for d in it.get("diagnoses", [])] + \
            list(it.get("triples", []))

    return await per_sample(client, samples, reqs, "report writing",
                            lambda a: text_candidates(a["reports"], triples_of))


async def candidate_triples(client: LMMClient, cfg: PipelineConfig, owners: list[str], cands: list[Candidate],
                            turn: int) -> list[list[Triple] | SampleError]:
    """Generated X-rays: the same structured analysis as the samples (so both graphs share a
    vocabulary), all candidates of a batch in one pass at the ranking temperature."""
    ex, k = _examples(cfg), cfg.knowledge
    reqs = [build_request(cfg, MP.analysis(k, ex, None, c.image), MS.record(k), o, "rank", turn + 1, c.id,
                          temperature=cfg.lmm.rank_temperature) for o, c in zip(owners, cands)]
    return [SampleError(o, f"candidate {c.id} analysis: {r.error}") if r.error else
            knowledge_from_record(r.parsed).triples for o, c, r in zip(owners, cands, await client.complete(reqs))]
