"""What flows between stages: one immutable ``Row`` per sample. A stage returns new rows.

A row carries the sample (its image decoded only while the row is in the pipeline), what the
stages found so far (knowledge, candidates, best), its first failure, and its own bookkeeping:
every LMM request it made (turn, tokens, start/end), dense-model work done for it, its position
on the serial LMM critical path (``turn``), and when it was in which stage. Counted figures are
computed from the row itself, never from a run-wide log.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbridge.engine.types import Candidate, Knowledge, Sample

if TYPE_CHECKING:
    from kbridge.engine.config import PipelineConfig


@dataclass(frozen=True)
class Failure:
    stage: str
    message: str
    detail: str = ""
    """A traceback for unexpected errors (written to errors.jsonl with -v)."""


@dataclass(frozen=True)
class LMMRecord:
    """One sequence the LMM decoded (or served from the cache) for this row."""

    stage: str
    turn: int
    prompt_tokens: int
    generated_tokens: int
    cached: bool
    start: float
    end: float
    """``time.time()`` when the call holding this request was sent and answered."""
    engine: dict | None = None
    """The engine's own figures for this request when it reports them (vLLM): queue_s,
    prefill_s, decode_s, cached_prompt_tokens (``Generation.engine``)."""


def critical_path(records) -> tuple[int, int]:
    """(decode, prefill) tokens on a sample's serial LMM chain: for each wave of requests, the
    longest sequence decoded (and the longest prompt prefilled), summed over the waves.

    A wave is a turn's requests that ran side by side; a request of the same turn that started
    only after the wave's calls had ended (a retry with another seed) is a wave of its own, so
    retries lengthen the path. On a GPU the sequences of one wave decode together, so the wave
    costs about as much as its longest sequence. ``records``: fresh (not cached) LMMRecords.
    """
    decode = prefill = 0
    by_turn: dict[int, list] = {}
    for r in records:
        by_turn.setdefault(r.turn, []).append(r)
    for recs in by_turn.values():
        recs.sort(key=lambda r: (r.start, r.end))
        end, longest, widest = None, 0, 0
        for r in recs:
            if end is not None and r.start >= end and r.end > end:  # after the wave ended: serial
                decode, prefill, longest, widest = decode + longest, prefill + widest, 0, 0
                end = None
            end = r.end if end is None else max(end, r.end)
            longest, widest = max(longest, r.generated_tokens), max(widest, r.prompt_tokens)
        decode, prefill = decode + longest, prefill + widest
    return decode, prefill


@dataclass(frozen=True)
class Row:
    sample: Sample
    knowledge: Knowledge | None = None
    candidates: tuple[Candidate, ...] = ()
    best: str | None = None
    error: Failure | None = None
    lmm: tuple[LMMRecord, ...] = ()
    unet_evals: float = 0.0
    vae_decodes: float = 0.0
    turn: int = 0
    """The sample's position on its serial LMM critical path so far (0: no LMM turn yet)."""
    timings: tuple[tuple[str, float, float], ...] = ()
    """(stage, start, end) in ``time.time()`` seconds."""
    admitted: float = 0.0
    """When the row could start (entered the pipeline)."""
    preview_decodes: float = 0.0
    """Cheap previews decoded for its unrefined candidates (``generation.refine_top``)."""
    retrieved: bool = False
    """The retrieve stage has run for it (whether or not it found candidates)."""
    cfg: PipelineConfig | None = None
    """A served request's own configuration (its overrides over the same loaded models), else None:
    the run's. A stage call only ever holds rows of one configuration."""
    steps: int | None = None
    """A served request's denoising steps, else None: the generator's own."""
    job: str | None = None
    """The served request (``kbridge serve`` job id) this row answers, else None."""
    trace_calls: tuple = ()
    """``--trace`` under Ray: the stage calls made for it in the actors, (stage, worker, start, end,
    batch args), drawn by the driver's tracer (engine/trace)."""

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id

    @property
    def missing(self) -> str | None:
        return self.sample.missing

    def replace(self, **kw) -> "Row":
        return dataclasses.replace(self, **kw)

    def fail(self, stage: str, message: str, detail: str = "") -> "Row":
        return self if self.error is not None else self.replace(error=Failure(stage, message, detail))

    def with_lmm(self, records: list[LMMRecord]) -> "Row":
        """Add this row's request records; the critical path advances to the latest turn."""
        if not records:
            return self
        return self.replace(lmm=self.lmm + tuple(records), turn=max([self.turn] + [r.turn for r in records]))

    def timed(self, stage: str, start: float, end: float) -> "Row":
        return self.replace(timings=self.timings + ((stage, start, end),))

    def counts(self) -> dict:
        """Counted figures: sequences decoded, serial LMM turns, tokens (total and on the critical
        path), cache hits, UNet / VAE work (``preview_decodes``: cheap previews of unrefined
        candidates)."""
        fresh = [r for r in self.lmm if not r.cached]
        decode, prefill = critical_path(fresh)
        return {"lmm_calls": len(fresh), "lmm_serial_turns": max((r.turn for r in fresh), default=0),
                "prompt_tokens": sum(r.prompt_tokens for r in fresh),
                "generated_tokens": sum(r.generated_tokens for r in fresh),
                "critical_path_decode_tokens": decode, "critical_path_prefill_tokens": prefill,
                "cache_hits": len(self.lmm) - len(fresh),
                "unet_evals": round(self.unet_evals, 3), "vae_decodes": round(self.vae_decodes, 3),
                "preview_decodes": round(self.preview_decodes, 3)}

    def timings_dict(self, t0: float) -> dict:
        """Per stage: start and end relative to ``t0`` (the run start) and seconds spent."""
        spans: dict[str, list[float]] = {}
        for stage, a, b in self.timings:  # a stage met twice (load, in the phased schedule): first start, last end
            s = spans.setdefault(stage, [a, b, 0.0])
            s[0], s[1], s[2] = min(s[0], a), max(s[1], b), s[2] + (b - a)
        return {k: {"start": round(a - t0, 4), "end": round(b - t0, 4), "seconds": round(d, 4)}
                for k, (a, b, d) in spans.items()}
