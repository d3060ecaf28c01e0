"""Knowledge-graph similarity of two triple sets.

Fixes over the reference: entity names are normalised (case, articles, whitespace, simple
plurals), edges are undirected (an edge and its reverse are one edge), relations can count, and
empty graphs score 0 instead of dividing by zero. Scores are in [0, 1], on the same scale as the
semantic score.
"""
from __future__ import annotations

import re
from typing import Iterable

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


def graph_score(a: Iterable[Triple], b: Iterable[Triple], metric: str) -> float:
    if metric == "jaccard":
        return jaccard(a, b, with_relations=False)
    if metric == "jaccard_relations":
        a, b = list(a), list(b)
        # relation-aware, but a shared edge with a different verb still earns half credit
        return 0.5 * (jaccard(a, b, False) + jaccard(a, b, True))
    raise ValueError(f"unknown graph metric {metric!r}")
