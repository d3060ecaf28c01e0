"""Knowledge-graph similarity of two triple sets.

Fixes over the reference: entity names are normalised (case, articles, whitespace, simple
plurals), edges are undirected (an edge and its reverse are one edge), relations can count, and
empty graphs score 0 instead of dividing by zero. Scores are in [0, 1], on the same scale as the
semantic score.

Metrics: ``jaccard``, ``jaccard_relations`` (exact edges after normalisation), ``cosine`` (the
reference's adjacency-matrix cosine, fixed: any graph sizes, identical graphs = 1) and ``soft``
(the default: each triple embedded by the scorer's text tower, graph score = symmetric MaxSim
between the two triple sets, so "man holds cup" and "person holding mug" are close).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import numpy as np

from kbridge.engine.types import Triple

_ARTICLES = {"a", "an", "the"}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_entity(text: str) -> str:
    """'The  Red Cups' → 'red cup': lower case, no punctuation or leading article, head noun singular."""
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    if words:
        words[-1] = _singular(words[-1])
    return " ".join(words)


def normalize_relation(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def edges(triples: Iterable[Triple], with_relations: bool) -> set:
    """Undirected edges {head, tail}, optionally paired with the normalised relation."""
    out = set()
    for t in triples:
        h, tl = normalize_entity(t.head), normalize_entity(t.tail)
        if not h or not tl:
            continue
        e = frozenset((h, tl))
        out.add((e, normalize_relation(t.relation)) if with_relations else e)
    return out


def jaccard(a: Iterable[Triple], b: Iterable[Triple], with_relations: bool = False) -> float:
    """|A ∩ B| / |A ∪ B| over undirected edges; 0 when both graphs are empty."""
    ea, eb = edges(a, with_relations), edges(b, with_relations)
    union = ea | eb
    return len(ea & eb) / len(union) if union else 0.0


def cosine(a: Iterable[Triple], b: Iterable[Triple]) -> float:
    """Cosine of the two graphs' undirected 0/1 adjacency matrices over the union of their nodes.

    The reference builds the matrices over each graph's own nodes, so graphs of different sizes
    raise and identical graphs need not score 1. Over the shared node index the Frobenius inner
    product counts a shared edge twice (A[u, v] and A[v, u]) and a shared self-loop once, which
    is what is summed here without building the matrices.
    """
    ea, eb = edges(a, False), edges(b, False)

    def weight(es) -> int:
        return sum(2 if len(e) == 2 else 1 for e in es)

    na, nb = weight(ea), weight(eb)
    return weight(ea & eb) / (na * nb) ** 0.5 if na and nb else 0.0


def triple_text(t: Triple) -> str | None:
    """The text a triple is embedded as: normalised, entities in a fixed order so that an edge and
    its reverse are one string (edges are undirected). None for a triple with a blank entity."""
    h, tl = normalize_entity(t.head), normalize_entity(t.tail)
    if not h or not tl:
        return None
    h, tl = sorted((h, tl))
    return f"{h} {normalize_relation(t.relation)} {tl}".replace("  ", " ")


def graph_texts(triples: Iterable[Triple]) -> list[str]:
    """A graph's distinct triple texts, sorted: order and duplicates do not change the score."""
    return sorted({s for s in map(triple_text, triples) if s})


def soft_scores(pairs: list[tuple[list[Triple], list[Triple]]],
                embed_texts: Callable[[list[str]], object]) -> list[float]:
    """Soft graph similarity of many (graph, graph) pairs at once, each in [0, 1].

    Every distinct triple text in the batch is embedded once (one batched call; the scorers also
    cache texts across batches); each pair's score is the symmetric MaxSim between the two sets
    of unit vectors (mean best-match cosine, averaged over both directions), clipped to [0, 1].
    An empty graph on either side scores 0.
    """
    from kbridge.kernels.maxsim import maxsim_pairs, pack

    left = [graph_texts(a) for a, _ in pairs]
    right = [graph_texts(b) for _, b in pairs]
    vocab = sorted({s for g in left + right for s in g})
    if not vocab:
        return [0.0] * len(pairs)
    emb = np.asarray(embed_texts(vocab), dtype=np.float32)  # [V, D] unit vectors
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    row = {s: k for k, s in enumerate(vocab)}
    # the same sample graph is usually paired with all its candidates: pack each distinct one once
    uniq: dict[tuple, int] = {}
    q_sets = []
    for g in left:
        if tuple(g) not in uniq:
            uniq[tuple(g)] = len(q_sets)
            q_sets.append(emb[[row[s] for s in g]])
    x_sets = [emb[[row[s] for s in g]] for g in right]
    q, q_off = pack(q_sets, emb.shape[1])
    x, x_off = pack(x_sets, emb.shape[1])
    idx = np.array([(uniq[tuple(g)], j) for j, g in enumerate(left)], dtype=np.int64)
    scores = maxsim_pairs(q, q_off, x, x_off, idx, symmetric=True)
    return np.clip(scores, 0.0, 1.0).astype(float).tolist()


def graph_scores(pairs: list[tuple[list[Triple], list[Triple]]], metric: str,
                 embed_texts: Callable[[list[str]], object] | None = None) -> list[float]:
    """``graph_score`` over many pairs; ``soft`` needs ``embed_texts`` (texts → [N, D])."""
    if metric == "soft":
        if embed_texts is None:
            raise ValueError("the soft graph metric needs a text encoder")
        return soft_scores(pairs, embed_texts)
    return [graph_score(a, b, metric) for a, b in pairs]


GRAPH_METRICS = ("soft", "jaccard", "jaccard_relations", "cosine")


def graph_score(a: Iterable[Triple], b: Iterable[Triple], metric: str) -> float:
    if metric == "jaccard":
        return jaccard(a, b, with_relations=False)
    if metric == "jaccard_relations":
        a, b = list(a), list(b)
        # relation-aware, but a shared edge with a different verb still earns half credit
        return 0.5 * (jaccard(a, b, False) + jaccard(a, b, True))
    if metric == "cosine":
        return cosine(a, b)
    raise ValueError(f"unknown graph metric {metric!r}")
