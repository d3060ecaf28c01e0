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
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from kbridge.engine import data as D
from kbridge.engine.rows import LMMRecord, Row
from kbridge.engine.stages import STAGES, Stage
from kbridge.engine.store import append_line, candidate_dict, repair_jsonl
from kbridge.engine.types import Candidate, Knowledge, ObjectInfo, Sample, Triple

PHASE_DIR = "phases"


def row_to_json(row: Row, paths: dict[str, str]) -> dict:
    """A row as JSON (``paths``: candidate id → its persisted image); no decoded images."""
    s = row.sample
    return {"sample": {"sample_id": s.sample_id, "index": s.index, "text": s.text, "missing": s.missing,
                       "labels": list(s.labels), "file_name": s.file_name},
            "knowledge": row.knowledge.as_dict() if row.knowledge is not None else None,
            "candidates": [candidate_dict(c, paths) for c in row.candidates], "best": row.best,
            "lmm": [list(r.__dict__.values()) for r in row.lmm], "unet_evals": row.unet_evals,
            "vae_decodes": row.vae_decodes, "turn": row.turn, "timings": [list(t) for t in row.timings],
            "admitted": row.admitted, "preview_decodes": row.preview_decodes, "retrieved": row.retrieved,
            "trace_calls": [list(c) for c in row.trace_calls]}


def _triples(items) -> list[Triple]:
    return [Triple(t["head"], t["relation"], t["tail"]) for t in items]


def row_from_json(d: dict) -> Row:
    """The row ``row_to_json`` wrote, without images (phase files written before the typed fields
    kept them in ``extra``: still read)."""
    s = d["sample"]
    k = d["knowledge"]
    old = d.get("extra") or {}
    kn = None if k is None else Knowledge([ObjectInfo(o["name"], o["count"], o["attributes"]) for o in k["objects"]],
                                          k["style"], _triples(k["triples"]), k.get("medical"))
    cands = [Candidate(c["id"], c["source"], text=c.get("text"), prompt=c.get("prompt"), seed=c.get("seed"),
                       triples=_triples(c.get("triples", [])), scores=c.get("scores", {}),
                       retriever=c.get("retriever"), refined=c.get("refined", old.get("refined", {}).get(c["id"])))
             for c in d["candidates"]]
    return Row(Sample(s["sample_id"], s["index"], s["text"], None, s["missing"], s["labels"], s["file_name"]),
               knowledge=kn, candidates=tuple(cands), best=d["best"], lmm=tuple(LMMRecord(*r) for r in d["lmm"]),
               unet_evals=d["unet_evals"], vae_decodes=d["vae_decodes"], turn=d["turn"],
               timings=tuple(tuple(t) for t in d["timings"]), admitted=d["admitted"],
               preview_decodes=d.get("preview_decodes", old.get("preview_decodes", 0.0)),
               retrieved=d.get("retrieved", bool(old.get("retrieved"))),
               trace_calls=tuple(tuple(c) for c in d.get("trace_calls", ())))


class PhaseFiles:
    """The rows each phase has finished, one append-only file per phase (torn tails cut on open).

    Candidate images persisted by a phase stay on disk until the next phase's load stage
    (``stage("load")``) decodes them; until then their paths are kept here, by sample id."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir)
        self.dir = self.root / PHASE_DIR
        self.pending: dict[str, dict[str, str]] = {}
        """sample id → candidate id → the PNG an earlier phase persisted and no load has decoded."""

    def path(self, k: int) -> Path:
        return self.dir / f"{k}.jsonl"

    def done(self, k: int) -> set[str]:
        return {d["sample"]["sample_id"] for d in repair_jsonl(self.path(k))}

    def rows(self, k: int, skip: set[str]) -> Iterator[Row]:
        """Phase ``k``'s rows, read line by line (never the whole file in memory)."""
        p = self.path(k)
        if not p.exists():
            return
        with open(p, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                sid = d["sample"]["sample_id"]
                if sid in skip:
                    continue
                paths = {c["id"]: str(self.root / c["image"]) for c in d["candidates"] if "image" in c}
                if paths:
                    self.pending[sid] = paths
                yield row_from_json(d)

    def stage(self, name: str) -> Stage:
        """The stage ``name`` of a phase: ``load`` also decodes the candidate images persisted for its rows."""
        st = STAGES[name]
        if name != "load":
            return st
        return replace(st, fn=lambda rows, ctx: self._decoded(st.fn(rows, ctx)),
                       applies=lambda r, cfg: st.applies(r, cfg) or r.sample_id in self.pending)

    def _decoded(self, rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            paths = self.pending.pop(r.sample_id, None)
            if paths and r.error is None:
                try:
                    r = r.replace(candidates=tuple(replace(c, image=D.load_image(Path(paths[c.id])))
                                                   if c.id in paths else c for c in r.candidates))
                except (OSError, ValueError) as e:
                    r = r.fail("load", f"a persisted candidate image is unreadable: {e}")
            out.append(r)
        return out

    def persist(self, k: int, row: Row, store) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        paths = store.write_images(row, base=self.dir)
        for cid, p in self.pending.pop(row.sample_id, {}).items():  # persisted earlier, not decoded since
            paths.setdefault(cid, Path(p).relative_to(self.root).as_posix())
        append_line(self.path(k), row_to_json(row, paths))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
