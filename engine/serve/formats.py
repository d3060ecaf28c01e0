"""Rows as JSON for the HTTP layer: results (the shape of a results.jsonl line), failures and the one error body,
server-sent events per finished stage, and the in-memory store of generated PNGs (/v1/files/)."""
from __future__ import annotations

import base64
import time

from kbridge.engine.serve.jobs import Job
from kbridge.engine.store import png_bytes, result_line


class Files:
    """Generated PNGs served under /v1/files/{job}/{candidate}.png: dropped after ``ttl`` seconds
    (``evict``, on a timer and on every access) and, oldest first, beyond ``max_bytes`` in all."""

    def __init__(self, ttl: float, max_bytes: int = 512 * 1024 * 1024):
        self.ttl, self.max_bytes, self.items, self.bytes = ttl, max_bytes, {}, 0

    def put(self, key: str, data: bytes) -> None:
        self._drop(key)
        self.items[key] = (data, time.time() + self.ttl)  # dicts keep insertion order: oldest first
        self.bytes += len(data)
        self.evict()

    def _drop(self, key: str) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= len(old[0])

    def evict(self) -> None:
        now = time.time()
        for k in [k for k, (_, exp) in self.items.items() if exp < now]:
            self._drop(k)
        while self.bytes > self.max_bytes and self.items:
            self._drop(next(iter(self.items)))

    def get(self, key: str) -> bytes | None:
        self.evict()
        hit = self.items.get(key)
        return hit[0] if hit else None


def result_of(job: Job, row, files: Files) -> dict:
    """The row's result, the shape of a results.jsonl line (store.result_line), images as data URIs
    or file URLs; timings in seconds from the request's arrival, with its ``queue`` (arrival to
    admission) and ``request`` (arrival to now) spans. Runs off the loop."""
    paths = {}
    for c in row.candidates:
        if c.image is not None:
            data = png_bytes(c.image)
            if job.images == "url":
                key = f"{job.id}/{c.id}.png"
                files.put(key, data)
                paths[c.id] = f"/v1/files/{key}"
            else:
                paths[c.id] = "data:image/png;base64," + base64.b64encode(data).decode()
    end = job.finished or time.time()
    line = result_line(row, paths, job.created, end)
    line["timings"]["queue"] = {"start": 0.0, "end": round(row.admitted - job.created, 4),
                                "seconds": round(row.admitted - job.created, 4)}
    line["timings"]["request"] = {"start": 0.0, "end": round(end - job.created, 4),
                                  "seconds": round(end - job.created, 4)}
    return line


ERROR_TYPES = {400: "invalid_request", 401: "authentication", 404: "not_found", 405: "method_not_allowed",
               408: "request_timeout", 413: "too_large", 422: "invalid_value", 429: "rate_limited",
               499: "cancelled", 500: "internal_error", 503: "unavailable", 504: "timeout"}
"""The error body's ``type`` for each status kbridge serve answers with."""


def error_body(status: int, message: str, code: str | None = None, **more) -> dict:
    """The one error shape: ``{"error": {"message", "type", "code", ...}}``."""
    kind = ERROR_TYPES.get(status, "invalid_request" if status < 500 else "internal_error")
    return {"error": {"message": message, "type": kind, "code": code or kind, **more}}


def failure_of(row) -> tuple[int, dict]:
    """A failed row as (status, the one error body): 499 cancelled, 503 never admitted (the
    pipeline stopped: the LMM engine died), else 500 naming the stage."""
    e = row.error
    status = 499 if e.message == "cancelled" else 503 if e.stage == "admission" else 500
    code = {499: "cancelled", 503: "not_ready"}.get(status, "stage_failed")
    return status, error_body(status, e.message, code, stage=e.stage, sample_id=row.sample_id)


def event_of(stage: str, row, job: Job) -> list[tuple[str, dict]]:
    """Server-sent events for one finished stage of one row (JSON-ready)."""
    if stage == "extract":
        return [("knowledge", {"knowledge": row.knowledge.as_dict()})]
    if stage == "write":
        if row.missing == "image":
            return [("prompts", {"prompts": [c.prompt for c in row.candidates]})]
        return [("captions", {"captions": [c.text for c in row.candidates]})]
    if stage == "render":
        return [("candidate", {"id": c.id, "prompt": c.prompt, "seed": c.seed}) for c in row.candidates
                if c.source == "generated" and c.image is not None]
    if stage == "candidate_knowledge":
        return [("candidate_knowledge", {c.id: [t.as_dict() for t in c.triples] for c in row.candidates})]
    if stage == "retrieve":
        ids = [c.id for c in row.candidates if c.source == "retrieved"]
        return [("retrieved", {"ids": ids})] if ids else []
    if stage == "rank":
        return [("scores", {"scores": {c.id: c.scores for c in row.candidates}, "best": row.best})]
    return []
