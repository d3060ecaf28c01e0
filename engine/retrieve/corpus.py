"""Retrieved candidates: real items of the missing modality, found in an index of the complete samples.

``build_corpus`` (``kbridge index build``) extracts the knowledge of every complete sample (one
LMM call each, cached in the run store like every other call), embeds its image, its text and its
knowledge graph with the scorer, and writes ``<run dir>/index/``:

- ``image.faiss`` — rows ``[√w_s · image, √w_g · graph]``, searched for image-missing samples;
- ``text.faiss`` — rows ``[√w_s · text, √w_g · graph]``, searched for text-missing samples;
- ``items.jsonl`` — per row: sample id, index, image path, text, triples; ``meta.json``.

The graph embedding is the normalised mean of the item's triple embeddings. A query is built the
same way from the incomplete sample's available modality and its triples, so the inner product is
``w_s · cos(semantic) + w_g · cos(graph)`` (w normalised to sum 1): candidates whose knowledge and
semantics both match come first. Retrieval is coarse; every retrieved candidate is then ranked with
the generated ones by the exact semantic and graph scores (``source: "retrieved"``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbridge.engine.config import PipelineConfig
from kbridge.engine.domains import domain_of
from kbridge.engine.rank.graph import graph_texts
from kbridge.engine.retrieve.index import EmbeddingIndex
from kbridge.engine.store import atomic_write
from kbridge.engine.types import Candidate, Knowledge, Sample, SampleError, Triple
from kbridge.engine.errors import KbridgeError

log = logging.getLogger(__name__)

INDEX_DIR = "index"


class IndexMismatch(KbridgeError, ValueError):
    """The saved index was embedded by other models than the run's scorer."""


def index_dir(cfg: PipelineConfig, run_dir: Path) -> Path:
    return Path(cfg.rank.index_dir) if cfg.rank.index_dir else Path(run_dir) / INDEX_DIR


def _np(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


def graph_embeddings(embed_texts, graphs: list[list[Triple]], dim: int) -> np.ndarray:
    """[G, D]: each graph's distinct triple texts embedded (one batched call), mean, unit length;
    a zero row for an empty graph."""
    texts = [graph_texts(g) for g in graphs]
    vocab = sorted({t for ts in texts for t in ts})
    out = np.zeros((len(graphs), dim), np.float32)
    if not vocab:
        return out
    emb = _np(embed_texts(vocab))
    row = {t: i for i, t in enumerate(vocab)}
    for g, ts in enumerate(texts):
        if ts:
            v = emb[[row[t] for t in ts]].mean(0)
            out[g] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def scorer_key(cfg: PipelineConfig) -> dict:
    """What fixes the embedding space: an index only serves runs with the same scorer models (the
    domain's scorer)."""
    return domain_of(cfg).scorer_key(cfg)


def _weights(cfg: PipelineConfig) -> tuple[float, float]:
    ws, wg = cfg.rank.semantic_weight, cfg.rank.graph_weight
    return (ws / (ws + wg)) ** 0.5, (wg / (ws + wg)) ** 0.5


def joint(semantic: np.ndarray, graph: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """[N, 2D] rows whose inner products are w_s · cos(semantic) + w_g · cos(graph)."""
    a, b = _weights(cfg)
    return np.concatenate([a * semantic, b * graph], axis=1).astype(np.float32)


async def build_corpus(cfg: PipelineConfig, ds, scorer, client, out: Path, limit: int | None = None) -> dict:
    """Index the complete samples of dataset ``ds`` (both modalities present) into ``out``.

    Returns a summary; samples that cannot be loaded or extracted are listed under ``errors``.
    Raises ValueError when nothing could be indexed.
    """
    from kbridge.engine import data as D

    samples, errors = [], []
    for i in [i for i in range(len(ds)) if i not in ds.missing][:limit]:
        try:
            samples.append(D.load_sample(ds, i, None))
        except SampleError as e:
            errors.append({"sample_id": e.sample_id, "error": e.message})
    kns = await domain_of(cfg).extract(client, cfg, samples) if samples else []
    keep = [(s, k) for s, k in zip(samples, kns) if not isinstance(k, SampleError)]
    errors += [{"sample_id": k.sample_id, "error": k.message} for k in kns if isinstance(k, SampleError)]
    if not keep:
        raise ValueError("no complete sample could be indexed")
    img = _np(scorer.embed_images([s.image for s, _ in keep]))
    txt = _np(scorer.embed_texts([s.text for s, _ in keep]))
    graph = graph_embeddings(scorer.embed_texts, [k.triples for _, k in keep], txt.shape[1])
    items = [{"sample_id": s.sample_id, "index": s.index, "image": str(D.image_path(ds, s.file_name).resolve()),
              "text": s.text, "triples": [t.as_dict() for t in k.triples]} for s, k in keep]
    return write_corpus(cfg, Path(out), items, img, txt, graph, errors)


def write_corpus(cfg: PipelineConfig, out: Path, items: list[dict], image: np.ndarray, text: np.ndarray,
                 graph: np.ndarray, errors: list | None = None) -> dict:
    """Save the two indexes and the item table. image / text / graph: [N, D] unit rows."""
    kind = cfg.rank.index_kind
    built = {}
    for name, sem in (("image", image), ("text", text)):
        built[name] = EmbeddingIndex.build(joint(sem, graph, cfg), kind, cfg.rank.ivfpq_min, use_gpu=None)
        built[name].save(out / f"{name}.faiss")
    atomic_write(out / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items).encode())
    meta = {"items": len(items), "dim": int(text.shape[1]), "kind": built["text"].kind,
            "semantic_weight": cfg.rank.semantic_weight, "graph_weight": cfg.rank.graph_weight,
            "scorer": scorer_key(cfg), "config_hash": cfg.result_hash(), "errors": errors or []}
    atomic_write(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    return {**meta, "path": str(out)}


@dataclass
class Retriever:
    """The saved corpus index of one run directory, loaded memory-mapped."""

    image: EmbeddingIndex
    text: EmbeddingIndex
    items: list[dict]
    dim: int
    cfg: PipelineConfig

    @classmethod
    def load(cls, cfg: PipelineConfig, path: Path) -> "Retriever":
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("scorer") != scorer_key(cfg):
            raise IndexMismatch(f"the index in {path} was built with another scorer ({meta.get('scorer')}, now "
                                f"{scorer_key(cfg)}); rebuild it with `kbridge index build`")
        items = [json.loads(line) for line in (path / "items.jsonl").read_text().splitlines() if line.strip()]
        return cls(EmbeddingIndex.load(path / "image.faiss"), EmbeddingIndex.load(path / "text.faiss"), items,
                   int(meta["dim"]), cfg)

    def candidates(self, scorer, samples: list[Sample], knowledge: list[Knowledge]) -> list[list[Candidate]]:
        """Up to ``rank.retrieve_k`` retrieved candidates per sample, best match first."""
        from kbridge.engine.data import load_image

        k = self.cfg.rank.retrieve_k
        out: list[list[Candidate]] = [[] for _ in samples]
        if k <= 0 or not samples:
            return out
        graph = graph_embeddings(scorer.embed_texts, [kn.triples for kn in knowledge], self.dim)
        for missing, index in (("image", self.image), ("text", self.text)):
            rows = [i for i, s in enumerate(samples) if s.missing == missing]
            if not rows:
                continue
            # the available modality: the text when the image is missing, and the other way round
            sem = _np(scorer.embed_texts([samples[i].text for i in rows]) if missing == "image"
                      else scorer.embed_images([samples[i].image for i in rows]))
            _, ids = index.search(joint(sem, graph[rows], self.cfg), k)
            for i, found in zip(rows, ids):
                for j in found:
                    if j < 0:
                        continue
                    it = self.items[int(j)]
                    triples = [Triple(t["head"], t["relation"], t["tail"]) for t in it["triples"]]
                    image = text = None
                    if missing == "image":
                        try:
                            image = load_image(Path(it["image"]))
                        except (OSError, ValueError) as e:
                            log.warning("%s: retrieved image %s unreadable: %s", samples[i].sample_id, it["image"], e)
                            continue
                    else:
                        text = it["text"]
                    c = Candidate(f"retrieved-{it['index']}", "retrieved", text=text, image=image, triples=triples,
                                  retriever="faiss")
                    out[i].append(c)
        return out
