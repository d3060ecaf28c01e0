"""Knowledge graphs for the report: triples → a networkx layout → compact drawing data.

The page draws each graph as inline SVG from this data (``page.js``: nodes become circles with
their names, edges lines with their relation), so a 10,000-sample report carries a few numbers
per node instead of SVG markup, and every label reaches the page as text, never as markup.

A spring layout costs ~5 ms; a report of 10,000 samples needs 20,000 of them, but knowledge
graphs of a few triples fall into few shapes (a few dozen). So each shape is laid out once:
nodes are named by their Weisfeiler-Lehman subgraph hashes (networkx), a graph whose sorted
node hashes match a laid-out one is mapped onto it node by node in breadth-first order from the
lowest hash, and the mapping
is used only when it carries every edge onto an edge (an exact check); where ties among
symmetric nodes defeat that order, networkx's VF2++ isomorphism test finds the mapping; a graph
of a new shape gets its own layout.
"""
from __future__ import annotations

import warnings

import networkx as nx

from kbridge.engine.rank.graph import normalize_entity

WIDTH, HEIGHT = 300, 220
"""The drawing box, in SVG user units (page.js draws in the same box)."""
MARGIN_X, MARGIN_Y = 64, 22
"""Space kept free at the edges for labels (centred under their nodes, so wider at the sides)."""
MAX_NODES = 24
"""Larger graphs keep their first edges up to this many nodes (a card is not a graph browser)."""


def knowledge_graph(triples: list[dict]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The graph of the triples: nodes merged by the ranker's entity normalisation ("The Red
    Cups" = "red cup"), as ``{node: label}`` (the first spelling seen, in order of appearance) and
    the edges with their relations ``[(node, node, relation)]`` (parallel edges kept)."""
    labels: dict[str, str] = {}
    edges: list[tuple[str, str, str]] = []
    for t in triples or []:
        if not isinstance(t, dict):
            continue
        h, tl = str(t.get("head") or "").strip(), str(t.get("tail") or "").strip()
        kh, kt = normalize_entity(h), normalize_entity(tl)
        if not kh or not kt:
            continue
        if len(labels) >= MAX_NODES and (kh not in labels or kt not in labels):
            continue
        labels.setdefault(kh, h)
        labels.setdefault(kt, tl)
        edges.append((kh, kt, str(t.get("relation") or "").strip()))
    return labels, edges


def simple_graph(labels: dict, edges: list) -> nx.Graph:
    """The undirected simple graph underneath (parallel edges and directions merged)."""
    g = nx.Graph()
    g.add_nodes_from(labels)
    g.add_edges_from((a, b) for a, b, _ in edges)
    return g


def _positions(g: nx.Graph, seed: int) -> dict:
    if len(g) == 1:
        return {next(iter(g)): (0.0, 0.0)}
    if len(g) == 2:
        a, b = g
        return {a: (-1.0, 0.0), b: (1.0, 0.0)}
    return nx.spring_layout(g, seed=seed, iterations=40)  # a fixed seed keeps reports reproducible


def _bfs_order(g: nx.Graph, h: dict) -> list:
    """Nodes in breadth-first order from the lowest hash, neighbours in hash order, component by
    component: two graphs of one shape then mostly list corresponding nodes at the same places."""
    seen, order = set(), []
    for start in sorted(g, key=h.__getitem__):
        if start in seen:
            continue
        seen.add(start)
        queue = [start]
        while queue:
            v = queue.pop(0)
            order.append(v)
            for u in sorted(g[v], key=h.__getitem__):
                if u not in seen:
                    seen.add(u)
                    queue.append(u)
    return order


def shape_positions(g: nx.Graph, cache: dict | None, seed: int = 0) -> dict:
    """Spring-layout positions of ``g``'s nodes, reusing the layout of a graph of the same shape
    from ``cache`` (``{shape key: [(graph, ordered nodes, edge set, positions), ...]}``, filled as
    it goes) when the node mapping is verified to be an isomorphism."""
    if cache is None:
        return _positions(g, seed)
    with warnings.catch_warnings():  # networkx 3.5 notes that unlabelled hashes changed; irrelevant here
        warnings.simplefilter("ignore", UserWarning)
        hashes = nx.weisfeiler_lehman_subgraph_hashes(g, iterations=2, digest_size=8)
    h = {v: hs[-1] if hs else "" for v, hs in hashes.items()}
    order = _bfs_order(g, h)
    bucket = cache.setdefault(tuple(sorted(h.values())), [])
    for rep, rep_order, rep_edges, pos in bucket:
        m = dict(zip(order, rep_order))
        if all(frozenset((m[a], m[b])) in rep_edges for a, b in g.edges):
            return {v: pos[m[v]] for v in g}
    for rep, _, _, pos in bucket:  # ties in hash order (symmetric nodes) can mislead: ask VF2++
        m = nx.vf2pp_isomorphism(g, rep)
        if m is not None:
            return {v: pos[m[v]] for v in g}
    pos = _positions(g, seed)
    bucket.append((g, order, {frozenset(e) for e in g.edges}, pos))
    return pos


def layout(triples: list[dict], seed: int = 0, cache: dict | None = None) -> dict | None:
    """``{"n": [[label, x, y], ...], "e": [[i, j, relation], ...]}`` with x, y integers inside
    the ``WIDTH`` × ``HEIGHT`` box; None for an empty graph. Deterministic for a given seed; with a ``cache``
    graphs of one shape share one layout (``cache["pattern"]``: the same edge list once nodes are
    numbered by first appearance, an exact match needing no graph at all; ``cache["shape"]``:
    see ``shape_positions``)."""
    labels, edges = knowledge_graph(triples)
    if not labels:
        return None
    names = list(labels)
    index = {k: i for i, k in enumerate(names)}
    xy = None
    if cache is not None:
        pattern = (len(names), tuple(sorted({(min(index[a], index[b]), max(index[a], index[b]))
                                             for a, b, _ in edges})))
        xy = cache.setdefault("pattern", {}).get(pattern)
    if xy is None:
        pos = shape_positions(simple_graph(labels, edges), None if cache is None else cache.setdefault("shape", {}),
                              seed)
        xy = [(float(pos[k][0]), float(pos[k][1])) for k in names]
        if cache is not None:
            cache["pattern"][pattern] = xy
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def scale(v: float, lo: float, hi: float, size: int, margin: int) -> int:
        span = hi - lo
        return round(size / 2 if span < 1e-9 else margin + (v - lo) / span * (size - 2 * margin))

    return {"n": [[labels[k], scale(x, x0, x1, WIDTH, MARGIN_X), scale(y, y0, y1, HEIGHT, MARGIN_Y)]
                  for k, (x, y) in zip(names, xy)],
            "e": [[index[a], index[b], rel] for a, b, rel in edges]}
