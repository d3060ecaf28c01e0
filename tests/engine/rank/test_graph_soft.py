"""The fixed reference "cosine" metric and the soft (embedding MaxSim) graph metric."""
import hashlib
import random

import numpy as np
import pytest

from kbridge.engine.rank.graph import GRAPH_METRICS, cosine, graph_scores, triple_text
from kbridge.engine.types import Triple

T = Triple


class HashEmbedder:
    """Deterministic random unit vector per string (distinct strings nearly orthogonal in 256-d);
    counts how often each string was embedded."""

    def __init__(self, dim=256):
        self.dim, self.calls, self.seen = dim, 0, []

    def __call__(self, texts):
        self.calls += 1
        self.seen.extend(texts)
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)


def score(a, b, metric, emb=None):
    return graph_scores([(a, b)], metric, emb or HashEmbedder())[0]


def adjacency_cosine(a, b):
    """The reference's idea with explicit matrices over the shared node index."""
    from kbridge.engine.rank.graph import edges

    ea, eb = edges(a, False), edges(b, False)
    nodes = sorted({n for e in ea | eb for n in e})
    ix = {n: k for k, n in enumerate(nodes)}

    def mat(es):
        m = np.zeros((len(nodes), len(nodes)))
        for e in es:
            u, v = (tuple(e) * 2)[:2]
            m[ix[u], ix[v]] = m[ix[v], ix[u]] = 1
        return m

    A, B = mat(ea), mat(eb)
    den = np.linalg.norm(A) * np.linalg.norm(B)
    return float((A * B).sum() / den) if den else 0.0


G = [T("man", "holds", "cup"), T("cup", "on", "table"), T("dog", "near", "man")]
METRICS = ["cosine", "soft"]


def test_soft_is_the_default_and_all_metrics_are_listed():
    from kbridge.engine.config import RankConfig

    assert RankConfig().graph_metric == "soft"
    assert set(GRAPH_METRICS) == {"soft", "jaccard", "jaccard_relations", "cosine"}


@pytest.mark.parametrize("metric", METRICS)
def test_identical_graphs_score_one(metric):
    assert score(G, list(reversed(G)), metric) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_order_and_edge_direction_do_not_matter(metric):
    rev = [T(t.tail, t.relation, t.head) for t in G]
    other = [T("man", "holds", "cup"), T("tree", "behind", "dog")]
    base = score(G, other, metric)
    assert score(rev, other, metric) == pytest.approx(base, abs=1e-6)
    assert score(list(reversed(G)), list(reversed(other)), metric) == pytest.approx(base, abs=1e-6)
    assert score(other, G, metric) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_empty_graphs_score_zero_without_error(metric):
    assert score([], [], metric) == 0.0
    assert score(G, [], metric) == 0.0
    assert score([], G, metric) == 0.0
    assert score([T("the", "is", "a")], G, metric) == 0.0  # blank entities after normalisation


@pytest.mark.parametrize("metric", METRICS)
def test_more_overlap_never_scores_lower(metric):
    ref = G + [T("lamp", "above", "table")]
    noise = [T("x", "r", "y"), T("y", "r", "z")]
    emb = HashEmbedder()
    scores = [score(ref, ref[:k] + noise, metric, emb) for k in range(len(ref) + 1)]
    assert all(b >= a - 1e-7 for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > scores[0]


def test_cosine_equals_explicit_adjacency_matrices_for_any_sizes():
    rng = random.Random(0)
    names = ["man", "cup", "table", "dog", "tree", "car", "sky"]
    for _ in range(100):
        a = [T(rng.choice(names), "r", rng.choice(names)) for _ in range(rng.randint(0, 7))]
        b = [T(rng.choice(names), "r", rng.choice(names)) for _ in range(rng.randint(0, 3))]
        assert cosine(a, b) == pytest.approx(adjacency_cosine(a, b), abs=1e-12)
        assert 0.0 <= cosine(a, b) <= 1.0


def test_triple_text_is_normalised_and_undirected():
    assert triple_text(T("The Cups", "ON", "a table")) == triple_text(T("table", "on", "cup")) == "cup on table"
    assert triple_text(T("", "on", "x")) is None


def test_soft_embeds_each_distinct_triple_once_per_batch():
    emb = HashEmbedder()
    cands = [[T("man", "holds", "cups")], [T("cup", "holds", "the man"), T("dog", "near", "man")], []]
    out = graph_scores([(G, c) for c in cands], "soft", emb)
    assert emb.calls == 1
    assert len(emb.seen) == len(set(emb.seen)) == 3 + 0  # G's 3 texts cover every candidate triple
    # one of G's three triples matches exactly: forward 1/3 (+ near-zero), backward 1
    assert out[0] == pytest.approx((1 / 3 + 1) / 2, abs=0.1)
    assert out[1] > out[0] and out[2] == 0.0


def test_soft_known_value_with_constructed_vectors():
    table = {"cup on man": [1, 0], "dog near man": [0, 1], "cat near man": [0.6, 0.8]}

    def emb(texts):
        return np.array([table[t] for t in texts], dtype=np.float32)

    a = [T("man", "on", "cup"), T("dog", "near", "man")]
    b = [T("cat", "near", "man")]
    # forward: max(.6) and max(.8) → .7; backward: max(.6, .8) = .8 → .75
    assert graph_scores([(a, b)], "soft", emb)[0] == pytest.approx(0.75, abs=1e-6)


def test_soft_with_the_tiny_clip_text_tower(cfg):
    from kbridge.engine.models import load_scorer

    scorer = load_scorer(cfg)
    g2 = [T("cat", "on", "sofa"), T("sky", "above", "tree")]
    out = graph_scores([(G, G), (G, g2), (g2, G)], "soft", scorer.embed_texts)
    assert out[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= out[1] < 1.0 and out[1] == pytest.approx(out[2], abs=1e-6)
    n = len(scorer.cache.rows)
    graph_scores([(G, g2)], "soft", scorer.embed_texts)
    assert len(scorer.cache.rows) == n  # every triple text was cached by the first call
