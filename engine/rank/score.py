"""Combine semantic and graph scores and pick the best candidate, for a whole batch at once."""
from __future__ import annotations

from kbridge.engine.config import RankConfig
from kbridge.engine.rank.graph import graph_scores
from kbridge.engine.rank.semantic import ClipScorer, cosine_scores
from kbridge.engine.types import Candidate, Knowledge, Sample


def combine(semantic: float, graph: float, cfg: RankConfig) -> float:
    """Weighted mean, in [0, 1]."""
    w = cfg.semantic_weight + cfg.graph_weight
    return (cfg.semantic_weight * semantic + cfg.graph_weight * graph) / w


def best_of(cands: list[Candidate]) -> str:
    """Highest total; ties go to the earlier candidate, so the choice is deterministic."""
    return max(enumerate(cands), key=lambda ic: (ic[1].scores["total"], -ic[0]))[1].id


def rank_batch(scorer: ClipScorer, cfg: RankConfig, samples: list[Sample], knowledge: list[Knowledge],
               candidates: list[list[Candidate]]) -> list[str]:
    """Score every candidate of every sample in place; returns each sample's best candidate id.

    All texts and all images of the batch go through the CLIP towers in one batched pass each;
    graph scores of the whole batch are one call (``soft``: one text-tower pass over the distinct
    triples, one MaxSim kernel call over all (sample, candidate) pairs).
    """
    texts, images = [], []  # (owner index, payload), flattened across the batch
    for i, (s, cands) in enumerate(zip(samples, candidates)):
        if s.missing == "image":
            texts.append(s.text)
            images.extend(c.image for c in cands)
        else:
            images.append(s.image)
            texts.extend(c.text for c in cands)
    t_emb, i_emb = scorer.embed_texts(texts), scorer.embed_images(images)
    graph = iter(graph_scores([(kn.triples, c.triples) for kn, cands in zip(knowledge, candidates) for c in cands],
                              cfg.graph_metric, scorer.embed_texts))
    ti = ii = 0
    best = []
    for s, kn, cands in zip(samples, knowledge, candidates):
        m = len(cands)
        if s.missing == "image":
            sem = cosine_scores(t_emb[ti], i_emb[ii:ii + m]) if m else []
            ti, ii = ti + 1, ii + m
        else:
            sem = cosine_scores(i_emb[ii], t_emb[ti:ti + m]) if m else []
            ii, ti = ii + 1, ti + m
        for c, sv in zip(cands, sem):
            g = next(graph)
            c.scores = {"semantic": float(sv), "graph": float(g), "total": combine(float(sv), g, cfg)}
        best.append(best_of(cands) if cands else "")
    return best
