"""The phased schedule: stage groups one after another over the whole selection.

LMM (load, extract, write) → diffusion (render) → LMM (load, candidate knowledge) → rank (load,
retrieve, rank). Between phases each row is persisted in ``OUT/phases/<k>.jsonl`` (its candidate
images as PNGs under ``OUT/phases/images/``), and the models the next phase does not need are
released, so a 72B LMM and SDXL never have to share the GPUs. A killed run resumes inside the
phase it was in: rows already in a phase's file are not redone. The files go when the run ends.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

from kbridge.engine.rows import LMMRecord, Row
from kbridge.engine.store import _append_line, _repair_jsonl, candidate_dict
from kbridge.engine.types import Candidate, Knowledge, ObjectInfo, Sample, Triple

PHASE_DIR = "phases"


def row_to_json(row: Row, paths: dict[str, str]) -> dict:
    s = row.sample
    return {"sample": {"sample_id": s.sample_id, "index": s.index, "text": s.text, "missing": s.missing,
                       "labels": list(s.labels), "file_name": s.file_name},
            "knowledge": row.knowledge.as_dict() if row.knowledge is not None else None,
            "candidates": [candidate_dict(c, paths) for c in row.candidates], "best": row.best,
            "lmm": [list(r.__dict__.values()) for r in row.lmm], "unet_evals": row.unet_evals,
            "vae_decodes": row.vae_decodes, "turn": row.turn, "timings": [list(t) for t in row.timings],
            "admitted": row.admitted, "extra": row.extra}


def _triples(items) -> list[Triple]:
    return [Triple(t["head"], t["relation"], t["tail"]) for t in items]


def row_from_json(d: dict, root: Path) -> Row:
    """The persisted row; candidate images stay on disk until the load stage decodes them."""
    s = d["sample"]
    k = d["knowledge"]
    kn = None if k is None else Knowledge([ObjectInfo(o["name"], o["count"], o["attributes"]) for o in k["objects"]],
                                          k["style"], _triples(k["triples"]), k.get("medical"))
    cands, pending = [], {}
    for c in d["candidates"]:
        cands.append(Candidate(c["id"], c["source"], text=c.get("text"), prompt=c.get("prompt"), seed=c.get("seed"),
                               triples=_triples(c.get("triples", [])), scores=c.get("scores", {}),
                               retriever=c.get("retriever")))
        if "image" in c:
            pending[c["id"]] = str(root / c["image"])
    extra = dict(d.get("extra") or {})
    if pending:
        extra["image_paths"] = pending
    return Row(Sample(s["sample_id"], s["index"], s["text"], None, s["missing"], s["labels"], s["file_name"]),
               knowledge=kn, candidates=tuple(cands), best=d["best"], lmm=tuple(LMMRecord(*r) for r in d["lmm"]),
               unet_evals=d["unet_evals"], vae_decodes=d["vae_decodes"], turn=d["turn"],
               timings=tuple(tuple(t) for t in d["timings"]), admitted=d["admitted"], extra=extra)


class PhaseFiles:
    """The rows each phase has finished, one append-only file per phase (torn tails cut on open)."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir)
        self.dir = self.root / PHASE_DIR

    def path(self, k: int) -> Path:
        return self.dir / f"{k}.jsonl"

    def done(self, k: int) -> set[str]:
        return {d["sample"]["sample_id"] for d in _repair_jsonl(self.path(k))}

    def rows(self, k: int, skip: set[str]) -> Iterator[Row]:
        """Phase ``k``'s rows, read line by line (never the whole file in memory)."""
        p = self.path(k)
        if not p.exists():
            return
        with open(p, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                if d["sample"]["sample_id"] not in skip:
                    yield row_from_json(d, self.root)

    def persist(self, k: int, row: Row, store) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        paths = store.write_images(row, base=self.dir)
        old = row.extra.get("image_paths", {})
        for cid, p in old.items():  # images persisted by an earlier phase and not decoded since
            paths.setdefault(cid, Path(p).relative_to(self.root).as_posix())
        _append_line(self.path(k), row_to_json(row, paths))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
