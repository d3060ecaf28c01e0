"""The rank stage on the tiny CLIP twin: every candidate of every row gets its semantic, graph and
total score, each equal to scoring that one candidate alone (cosine against the sample's available
modality; soft graph score against the sample's triples; the weighted mean), and each row's best
is its highest total."""
import dataclasses

import pytest
import torch
from PIL import Image

from kbridge.engine.rank.graph import graph_scores
from kbridge.engine.rank.semantic import cosine_scores
from kbridge.engine.types import Candidate, Knowledge, Triple

TRIPLES = [Triple("cup", "on", "table"), Triple("table", "in", "kitchen")]


def _alone(scorer, rank_cfg, row, c):
    """One candidate's scores, from its own embeddings (no batch)."""
    s = row.sample
    if s.missing == "image":
        sem = cosine_scores(scorer.embed_texts([s.text])[0], scorer.embed_images([c.image]))[0]
    else:
        sem = cosine_scores(scorer.embed_images([s.image])[0], scorer.embed_texts([c.text]))[0]
    graph = graph_scores([(row.knowledge.triples, c.triples)], rank_cfg.graph_metric, scorer.embed_texts)[0]
    w_s, w_g = rank_cfg.semantic_weight, rank_cfg.graph_weight
    return sem, graph, (w_s * sem + w_g * graph) / (w_s + w_g)


def test_rank_scores_every_candidate_as_alone_and_picks_the_highest_total(cfg, engine, stage_ctx, call_stage,
                                                                         loaded_rows, demo_index):
    kn = Knowledge([], "photo", TRIPLES)
    img, txt = loaded_rows([demo_index["image"], demo_index["text"]], knowledge=kn, turn=3)
    img = img.replace(candidates=(
        Candidate("c0", "generated", image=Image.new("RGB", (64, 64), "red"), triples=TRIPLES[:1]),
        Candidate("c1", "generated", image=Image.new("RGB", (64, 64), "white"), triples=TRIPLES),
        Candidate("retrieved-5", "retrieved", image=Image.new("RGB", (48, 40), "navy"), retriever="faiss")))
    txt = txt.replace(candidates=(Candidate("c0", "generated", text="a cup on a table in a kitchen", triples=TRIPLES),
                                  Candidate("c1", "generated", text="two dogs in the snow",
                                            triples=[Triple("dog", "in", "snow")])))
    out = call_stage("rank", [img, txt], stage_ctx())

    scorer = engine.models().scorer
    assert [r.sample_id for r in out] == [img.sample_id, txt.sample_id] and not any(r.error for r in out)
    for before, r in zip((img, txt), out):
        assert [c.id for c in r.candidates] == [c.id for c in before.candidates]
        assert [dataclasses.replace(c, scores={}) for c in r.candidates] == list(before.candidates)  # only scores added
        with torch.inference_mode():
            for c in r.candidates:
                sem, graph, total = _alone(scorer, cfg.rank, before, c)
                assert c.scores["semantic"] == pytest.approx(sem, abs=1e-5)
                assert c.scores["graph"] == pytest.approx(graph, abs=1e-5)
                assert c.scores["total"] == pytest.approx(total, abs=1e-5) and 0 <= total <= 1
        assert r.best == max(r.candidates, key=lambda c: c.scores["total"]).id
    # the sample's own triples, as a candidate's: the full graph score
    assert out[1].candidates[0].scores["graph"] == pytest.approx(1.0, abs=1e-5)
    assert out[0].candidates[2].scores["graph"] == 0.0  # no triples: nothing in common
