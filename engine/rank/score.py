"""Combine semantic and graph scores and pick the best candidate, for a whole batch at once."""
from __future__ import annotations

from dataclasses import replace

from kbridge.engine.config import RankConfig
from kbridge.engine.rank.graph import graph_scores
from kbridge.engine.rank.semantic import pair_scores
from kbridge.engine.rank import Scorer
from kbridge.engine.types import Candidate, Knowledge, Sample


def combine(semantic: float, graph: float, cfg: RankConfig) -> float:
    """Weighted mean, in [0, 1]."""
    w = cfg.semantic_weight + cfg.graph_weight
    return (cfg.semantic_weight * semantic + cfg.graph_weight * graph) / w


def best_of(cands: list[Candidate]) -> str:
    """Highest total; ties go to the earlier candidate, so the choice is deterministic."""
    return max(enumerate(cands), key=lambda ic: (ic[1].scores["total"], -ic[0]))[1].id


def rank_batch(scorer: Scorer, cfg: RankConfig, samples: list[Sample], knowledge: list[Knowledge],
               candidates: list[list[Candidate]]) -> tuple[list[list[Candidate]], list[str]]:
    """Score every candidate of every sample: returns the scored copies and each sample's best id.

    All texts and all images of the batch go through the scorer's towers in one batched pass each;
    graph scores of the whole batch are one call (``soft``: one text-tower pass over the distinct
    triples, one MaxSim kernel call over all (sample, candidate) pairs).
    """
    sems = pair_scores(scorer, samples, candidates)
    graph = iter(graph_scores([(kn.triples, c.triples) for kn, cands in zip(knowledge, candidates) for c in cands],
                              cfg.graph_metric, scorer.embed_texts))
    scored, best = [], []
    for cands, sem in zip(candidates, sems):
        mine = []
        for c, sv in zip(cands, sem):
            g = next(graph)
            mine.append(replace(c, scores={**c.scores, "semantic": float(sv), "graph": float(g),  # keeps e.g. mire_maxsim
                                           "total": combine(float(sv), g, cfg)}))
        scored.append(mine)
        best.append(best_of(mine) if mine else "")
    return scored, best
