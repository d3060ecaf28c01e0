"""MIRe as a candidate source: retrieved texts for text-missing samples, by late interaction.

``kbridge index build --retriever mire|both`` builds the faiss corpus as before (its item table
holds each complete sample's text and extracted triples) and then ``<index dir>/mire/``: every
item's text encoded as a ColBERT document (a token bag) and filed in a ``LateIndex``.

At run time, a text-missing sample's query is its image plus the fixed ``INSTRUCTION`` text (MIRe's
query is image + text; the sample has no text of its own); the top ``rank.retrieve_k`` items by
MaxSim become candidates (``source: "retrieved"``, ``retriever: "mire"``) carrying the item's text
and triples, and are ranked with the generated ones by the same scores. MIRe's documents are texts,
so image-missing samples keep the faiss index (``Retrievers`` below routes them).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from kbridge.engine.config import PipelineConfig
from kbridge.engine.retrieve.mire.index import LateIndex, LateIndexError
from kbridge.engine.types import Candidate, Knowledge, Sample, Triple

log = logging.getLogger(__name__)

MIRE_DIR = "mire"
INSTRUCTION = "Find the caption that describes this image."
"""The query text of a text-missing sample (our wording; MIRe's queries are questions about the image)."""


def _items(index_path: Path) -> list[dict]:
    p = Path(index_path) / "items.jsonl"
    if not p.exists():
        raise LateIndexError(f"{index_path}: no items.jsonl (build the corpus with `kbridge index build` first)")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def load_encoder(cfg: PipelineConfig):
    from kbridge.engine.retrieve.mire.checkpoint import resolve

    return resolve(cfg.models.mire, cfg.cache_dir(), cfg.rank.device)


def build_mire_index(cfg: PipelineConfig, index_path: Path, encoder=None) -> dict:
    """Encode the corpus items' texts (``items.jsonl`` of the faiss build) and save ``<index>/mire``."""
    items = _items(index_path)
    encoder = encoder or load_encoder(cfg)
    bags = encoder.encode_docs([it["text"] or "" for it in items])
    index = LateIndex.build(bags)
    out = index.save(Path(index_path) / MIRE_DIR)
    meta = json.loads((out / "meta.json").read_text())
    meta.update(model=cfg.models.mire, query_maxlen=encoder.model.cfg.query_maxlen)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {**meta, "path": str(out)}


@dataclass
class MireRetriever:
    """The MIRe index of one run directory with its encoder; ``candidates`` has the faiss
    Retriever's shape and serves text-missing samples only."""

    encoder: object
    index: LateIndex
    items: list[dict]
    cfg: PipelineConfig
    ncells: int = 4
    """Cells probed per query token."""
    ndocs: int = 256
    """Documents kept by centroid interaction for the exact re-rank."""

    @classmethod
    def load(cls, cfg: PipelineConfig, index_path: Path, encoder=None) -> "MireRetriever":
        path = Path(index_path) / MIRE_DIR
        index = LateIndex.load(path)
        built_with = json.loads((path / "meta.json").read_text()).get("model")
        if built_with != cfg.models.mire:
            raise LateIndexError(f"{path} was encoded with MIRe model {built_with!r}, the run uses "
                                 f"{cfg.models.mire!r}; rebuild it with `kbridge index build --retriever mire`")
        items = _items(index_path)
        if len(items) != index.size:
            raise LateIndexError(f"{path}: {index.size} documents but {len(items)} items; rebuild the index")
        return cls(encoder or load_encoder(cfg), index, items, cfg)

    def query(self, texts: list[str], images=None, k: int = 10) -> list[list[dict]]:
        """The user's own queries (question text, with an image each or none) → per query the top
        ``k`` corpus items: ``{"index", "sample_id", "text", "maxsim"}``, best first."""
        out = []
        for q in self.encoder.encode_queries(list(texts), images):
            scores, ids, _ = self.index.search(q, k, self.ncells, self.ndocs)
            out.append([{"index": self.items[int(j)]["index"], "sample_id": self.items[int(j)].get("sample_id"),
                         "text": self.items[int(j)]["text"], "maxsim": float(s)} for s, j in zip(scores, ids)])
        return out

    def candidates(self, scorer, samples: list[Sample], knowledge: list[Knowledge]) -> list[list[Candidate]]:
        """Up to ``rank.retrieve_k`` candidates per text-missing sample (none for the others)."""
        out: list[list[Candidate]] = [[] for _ in samples]
        k = self.cfg.rank.retrieve_k
        rows = [i for i, s in enumerate(samples) if s.missing == "text" and s.image is not None]
        if k <= 0 or not rows:
            return out
        bags = self.encoder.encode_queries([INSTRUCTION] * len(rows), [samples[i].image for i in rows])
        for i, q in zip(rows, bags):
            scores, ids, _ = self.index.search(q, k, self.ncells, self.ndocs)
            for score, j in zip(scores, ids):
                it = self.items[int(j)]
                c = Candidate(f"retrieved-mire-{it['index']}", "retrieved", text=it["text"], retriever="mire",
                              triples=[Triple(t["head"], t["relation"], t["tail"]) for t in it["triples"]])
                c.scores["mire_maxsim"] = float(score)
                out[i].append(c)
        return out


@dataclass
class Retrievers:
    """``rank.retriever`` routing: image-missing samples → faiss; text-missing → MIRe ("mire") or
    faiss then MIRe ("both", an item found by both kept once, as faiss found it)."""

    faiss: object | None
    mire: MireRetriever
    both: bool

    def candidates(self, scorer, samples: list[Sample], knowledge: list[Knowledge]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = [[] for _ in samples]
        rows = [i for i, s in enumerate(samples) if self.both or s.missing == "image"]
        if self.faiss is not None and rows:
            found = self.faiss.candidates(scorer, [samples[i] for i in rows], [knowledge[i] for i in rows])
            for i, cs in zip(rows, found):
                out[i].extend(cs)
        for i, cs in enumerate(self.mire.candidates(scorer, samples, knowledge)):
            have = {c.text for c in out[i] if c.text is not None}
            out[i].extend(c for c in cs if c.text not in have)
        return out


def with_mire(cfg: PipelineConfig, index_path: Path, faiss_retriever):
    """What ``models.load_retriever`` returns for ``rank.retriever`` "mire" / "both": the routed pair,
    or the faiss retriever alone (with a warning) when the MIRe index is missing or stale."""
    try:
        mire = MireRetriever.load(cfg, index_path)
    except LateIndexError as e:
        log.warning("MIRe retrieval off: %s", e)
        return faiss_retriever
    return Retrievers(faiss_retriever, mire, both=cfg.rank.retriever == "both")
