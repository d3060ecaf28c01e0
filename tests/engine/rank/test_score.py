"""Ranking on constructed embeddings and triples whose right answer is known."""
import pytest
import torch

from kbridge.engine.config import RankConfig
from kbridge.engine.rank.score import best_of, combine, rank_batch
from kbridge.engine.rank.semantic import cosine_scores
from kbridge.engine.types import Candidate, Knowledge, Sample, Triple

T = Triple


class FakeScorer:
    """Embeddings looked up by payload: texts by string, images by an attribute we attach."""

    def __init__(self, table):
        self.table = table

    def embed_texts(self, texts):
        # texts outside the table (triple texts of the soft graph metric) get a fixed random vector
        def row(t):
            return self.table[t] if t in self.table else torch.nn.functional.normalize(
                torch.randn(3, generator=torch.Generator().manual_seed(sum(map(ord, t)))), dim=0)

        return torch.stack([row(t) for t in texts]) if texts else torch.empty(0)

    def embed_images(self, images):
        return torch.stack([self.table[im] for im in images]) if images else torch.empty(0)


def unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def test_cosine_scores_clip_to_unit_interval():
    q = unit(1, 0)
    c = torch.stack([unit(1, 0), unit(0, 1), unit(-1, 0), unit(1, 1)])
    assert cosine_scores(q, c) == pytest.approx([1.0, 0.0, 0.0, 2 ** -0.5], abs=1e-6)


def test_combine_is_weighted_mean():
    cfg = RankConfig(semantic_weight=3, graph_weight=1)
    assert combine(1.0, 0.0, cfg) == pytest.approx(0.75)
    assert combine(0.2, 0.6, RankConfig()) == pytest.approx(0.4)


def test_best_ties_go_to_first():
    cs = [Candidate(f"c{i}", "generated", text="x", scores={"total": s}) for i, s in enumerate([0.5, 0.7, 0.7])]
    assert best_of(cs) == "c1"


def _batch():
    kn = Knowledge([], "", [T("man", "holds", "cup"), T("cup", "on", "table")])
    # image missing: the text is available, candidates are images "img0".."img2"
    s_img = Sample("d:0", 0, "a man holds a cup", None, "image")
    graphs = [[T("dog", "on", "grass")],
              [T("man", "holds", "cup"), T("cup", "on", "table")],  # graph-perfect
              [T("man", "holds", "cup")]]
    c_img = [Candidate(f"c{i}", "generated", image=f"img{i}", triples=graphs[i]) for i in range(3)]
    # text missing: the image is available, candidates are texts
    s_txt = Sample("d:1", 1, None, "query-image", "text")
    c_txt = [Candidate(f"c{i}", "generated", text=f"caption {i}", triples=[]) for i in range(2)]
    table = {
        "a man holds a cup": unit(1, 0, 0),
        "img0": unit(1, 0.05, 0),  # semantically best
        "img1": unit(0.6, 0.8, 0),
        "img2": unit(0, 1, 0),
        "query-image": unit(0, 0, 1),
        "caption 0": unit(1, 0, 0),
        "caption 1": unit(0, 0.3, 1),
    }
    return FakeScorer(table), [s_img, s_txt], [kn, Knowledge([], "", [])], [c_img, c_txt]


def test_semantic_only_picks_the_closest_embedding():
    scorer, samples, kns, cands = _batch()
    cands, best = rank_batch(scorer, RankConfig(semantic_weight=1, graph_weight=0), samples, kns, cands)
    assert best == ["c0", "c1"]
    assert cands[0][1].scores["semantic"] == pytest.approx(0.6, abs=1e-6)
    assert cands[1][0].scores["semantic"] == pytest.approx(0.0, abs=1e-6)


def test_graph_only_picks_the_matching_graph():
    scorer, samples, kns, cands = _batch()
    cands, best = rank_batch(scorer, RankConfig(semantic_weight=0, graph_weight=1, graph_metric="jaccard"), samples,
                             kns, cands)
    assert best[0] == "c1"
    assert [c.scores["graph"] for c in cands[0]] == pytest.approx([0.0, 1.0, 0.5])


def test_combined_scores_are_weighted_and_in_range():
    scorer, samples, kns, cands = _batch()
    cfg = RankConfig(semantic_weight=0.5, graph_weight=0.5, graph_metric="jaccard")
    cands, best = rank_batch(scorer, cfg, samples, kns, cands)
    for cs in cands:
        for c in cs:
            s = c.scores
            assert 0.0 <= s["total"] <= 1.0
            assert s["total"] == pytest.approx(0.5 * s["semantic"] + 0.5 * s["graph"])
    # c0: 0.5*0.9988 + 0 ; c1: 0.5*0.6 + 0.5*1.0 = 0.8 → the graph evidence wins
    assert best[0] == "c1"


def test_batched_ranking_equals_one_by_one():
    scorer, samples, kns, cands = _batch()
    cfg = RankConfig()
    scored, _ = rank_batch(scorer, cfg, samples, kns, cands)
    together = [[c.scores for c in cs] for cs in scored]
    scorer, samples, kns, cands = _batch()
    alone = []
    for s, k, cs in zip(samples, kns, cands):
        one, _ = rank_batch(scorer, cfg, [s], [k], [cs])
        alone.append([c.scores for c in one[0]])
    assert together == alone
