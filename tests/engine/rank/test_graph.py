import random

import pytest

from kbridge.engine.rank.graph import edges, graph_score, jaccard, normalize_entity
from kbridge.engine.types import Triple

T = Triple


def test_normalize_entity_handles_case_articles_space_plurals():
    assert normalize_entity("The  Red Cups") == "red cup"
    assert normalize_entity("a man") == normalize_entity("Man") == "man"
    assert normalize_entity("an apple, ") == "apple"
    assert normalize_entity("berries") == "berry"
    assert normalize_entity("boxes") == "box"
    assert normalize_entity("glass") == "glass"  # not a plural
    assert normalize_entity("bus") == "bus"


@pytest.mark.parametrize("metric", ["jaccard", "jaccard_relations"])
def test_identical_graphs_score_one(metric):
    g = [T("man", "holds", "cup"), T("cup", "on", "table"), T("dog", "near", "man")]
    assert graph_score(g, list(g), metric) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["jaccard", "jaccard_relations"])
def test_edge_and_its_reverse_are_the_same_edge(metric):
    assert graph_score([T("cat", "on", "sofa")], [T("sofa", "on", "cat")], metric) == pytest.approx(1.0)


def test_strings_are_compared_after_normalisation():
    # the reference needs exact strings: "a man" != "man"
    assert jaccard([T("A man", "holds", "the cups")], [T("man", "holds", "cup")]) == 1.0


def test_empty_graphs_score_zero_without_error():
    assert jaccard([], []) == 0.0
    assert jaccard([T("a", "b", "c")], []) == 0.0
    assert graph_score([], [], "jaccard_relations") == 0.0


def test_relations_count_in_relation_metric():
    a, b = [T("man", "holds", "cup")], [T("man", "drops", "cup")]
    assert jaccard(a, b, with_relations=False) == 1.0
    assert jaccard(a, b, with_relations=True) == 0.0
    assert graph_score(a, b, "jaccard_relations") == pytest.approx(0.5)


def test_known_value():
    a = [T("man", "holds", "cup"), T("cup", "on", "table")]
    b = [T("man", "holds", "cup"), T("dog", "on", "floor")]
    assert jaccard(a, b) == pytest.approx(1 / 3)  # 1 shared edge of 3 distinct


@pytest.mark.parametrize("metric", ["jaccard", "jaccard_relations"])
def test_scores_are_in_unit_interval_and_order_invariant(metric):
    rng = random.Random(0)
    names = ["man", "cup", "table", "dog", "tree", "car"]
    rels = ["on", "near", "holds"]
    for _ in range(50):
        a = [T(rng.choice(names), rng.choice(rels), rng.choice(names)) for _ in range(rng.randint(0, 6))]
        b = [T(rng.choice(names), rng.choice(rels), rng.choice(names)) for _ in range(rng.randint(0, 6))]
        s = graph_score(a, b, metric)
        assert 0.0 <= s <= 1.0
        assert s == pytest.approx(graph_score(b, a, metric))
        assert s == pytest.approx(graph_score(list(reversed(a)), b, metric))


def test_more_overlap_never_scores_lower():
    ref = [T("man", "holds", "cup"), T("cup", "on", "table"), T("dog", "near", "man"), T("lamp", "above", "table")]
    noise = [T("x", "r", "y"), T("y", "r", "z")]
    prev = -1.0
    for k in range(len(ref) + 1):
        s = jaccard(ref, ref[:k] + noise)
        assert s >= prev
        prev = s


def test_edges_undirected_and_skip_blank_entities():
    assert edges([T("a cat", "on", "sofa"), T("the", "is", "x")], False) == {frozenset(("cat", "sofa"))}
