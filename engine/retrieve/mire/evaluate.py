"""MIRe queries with the user's own question text, and retrieval evaluation against relevance
labels as MIRe's ``runs/evaluate_retrieval.py`` reports it (pytrec_eval's definitions):

- ``R@k``: per query, the fraction of its relevant documents found in the top k (k = 1, 5, 10,
  20, 50, 100), averaged over the queries that have relevant documents;
- ``P@1``, ``P@5``: relevant documents in the top 1 / 5, divided by 1 / 5;
- ``MRR@5``: 1 / rank of the first relevant document in the top 5 (0 if none); MIRe computes its
  "MRR" on the run cut at 5.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kbridge.engine.errors import KbridgeError

KS = (1, 5, 10, 20, 50, 100)


class RetrievalEvalError(KbridgeError):
    """A query or relevance file cannot be used."""


def retrieval_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """``ranked``: per query, document ids best first; ``relevant``: per query, the relevant ids."""
    rows = [(r, rel) for r, rel in zip(ranked, relevant) if rel]
    if not rows:
        raise RetrievalEvalError("no query has a relevant document: nothing to score")
    out = {f"R@{k}": float(np.mean([len(set(r[:k]) & rel) / len(rel) for r, rel in rows])) for k in KS}
    out["P@1"] = float(np.mean([len(set(r[:1]) & rel) for r, rel in rows]))
    out["P@5"] = float(np.mean([len(set(r[:5]) & rel) / 5 for r, rel in rows]))
    out["MRR@5"] = float(np.mean([next((1 / (i + 1) for i, d in enumerate(r[:5]) if d in rel), 0.0) for r, rel in rows]))
    out["queries"] = len(rows)
    return out


def read_queries(path: Path) -> list[dict]:
    """JSONL: ``{"id", "text", "image" (optional, relative to the file), "relevant": [corpus ids]}``;
    a corpus id is an item's ``sample_id`` or its ``index`` (``items.jsonl`` of the index)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RetrievalEvalError(f"{path}: cannot read the queries ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except ValueError as e:
            raise RetrievalEvalError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(q, dict) or not isinstance(q.get("text"), str):
            raise RetrievalEvalError(f"{path}:{n}: expected an object with a 'text' string")
        if q.get("image") is not None:
            q["image"] = str((path.parent / q["image"]).resolve())
        q["relevant"] = {str(x) for x in q.get("relevant") or []}
        q.setdefault("id", str(n))
        out.append(q)
    if not out:
        raise RetrievalEvalError(f"{path}: no queries")
    return out


def evaluate(retriever, queries: list[dict], k: int = 100) -> dict:
    """Search every query (its text, and its image when given) and score against ``relevant``."""
    from PIL import Image

    ranked = []
    for q in queries:
        try:
            image = Image.open(q["image"]) if q.get("image") else None
        except OSError as e:
            raise RetrievalEvalError(f"query {q['id']}: cannot read its image ({e})") from None
        hits = retriever.query([q["text"]], [image] if image else None, k)[0]
        ranked.append([str(h["sample_id"]) if str(h["sample_id"]) in q["relevant"] else str(h["index"]) for h in hits])
    return retrieval_metrics(ranked, [q["relevant"] for q in queries])
