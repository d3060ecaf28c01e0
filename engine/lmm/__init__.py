"""The LMM seam: requests in, parsed answers out, every call in one request log.

A backend implements ``async generate(requests) -> list[Generation]`` (hf here; the vLLM HTTP and
in-process backends implement the same). ``LMMClient`` wraps any backend with the response cache,
JSON validation with retries, and the request log from which the run's counted figures come.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

log = logging.getLogger(__name__)

PROMPT_VERSION = "2026-12-06.1"
"""Version of every domain's prompt text (engine/domains/*/prompts.py): part of the response-cache
key, so bump it whenever any prompt text changes."""


def system_message(text: str) -> dict:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def user_message(*parts) -> dict:
    """A user turn: PIL images become image parts, non-empty strings text parts, in order."""
    from PIL import Image

    content = []
    for p in parts:
        if isinstance(p, Image.Image):
            content.append({"type": "image", "image": p})
        elif p:
            content.append({"type": "text", "text": p})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@dataclass(frozen=True)
class Request:
    messages: list  # chat messages; image parts carry PIL images
    schema: dict | None  # None: free text
    seed: int
    max_new_tokens: int
    temperature: float
    sample_id: str
    stage: str
    turn: int
    """Position of this call on its sample's serial critical path (1 = first)."""


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int
    error: str | None = None
    """Set by a backend when the request failed for good (server down after retries, HTTP 4xx)."""
    engine: dict | None = None
    """What the engine reports about this request, when it does (vLLM): ``queue_s``, ``prefill_s``
    (to the first token), ``decode_s`` (first to last token), ``cached_prompt_tokens`` (prompt
    tokens served from the prefix cache). Over HTTP, measured by the client instead (``timing:
    "client"``): ``queue_s`` (waiting for a connection slot), ``first_token_s`` (sent → first
    token: the server's queue and prefill), ``decode_s``."""
    token_ids: list[int] | None = None
    """The decoded token ids, when the backend has them (hf): what the token breakdown
    (benchmarks/tokens.py) classifies. Not cached, not logged."""


@dataclass
class Response:
    text: str
    parsed: Any
    """The JSON value for schema requests (an object, or the bare array or string some schemas
    ask for; None when still invalid after retries), else None."""
    prompt_tokens: int
    generated_tokens: int
    cached: bool
    error: str | None = None


class Backend(Protocol):
    model_id: str
    continuous_batching: bool
    """True when the engine batches requests as they arrive (vLLM, an OpenAI server): the executor
    then sends each row's requests on their own, so one slow answer holds up only its own sample."""

    dead: str | None
    """Why the engine can answer no request any more (its server is gone, the engine core died),
    set by the backend when a request shows it; None while it is alive. The executor then stops
    admitting samples (``engine_dead``)."""

    async def generate(self, requests: Sequence[Request]) -> list[Generation]: ...


def engine_dead(backend) -> str | None:
    """The backend's ``dead`` reason (None for a live engine, or a backend that cannot tell)."""
    return getattr(backend, "dead", None) if backend is not None else None


@dataclass
class RequestLog:
    """One record per sequence decoded (or served from cache)."""

    records: list[dict] = field(default_factory=list)

    def add(self, req: Request, model: str, prompt_tokens: int, generated_tokens: int, cached: bool,
            start: float = 0.0, end: float = 0.0, engine: dict | None = None) -> None:
        self.records.append({"model": model, "sample_id": req.sample_id, "stage": req.stage, "turn": req.turn,
                             "prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
                             "cached": cached, "start": start, "end": end, "engine": engine or {}})

    def per_sample(self) -> dict[str, dict]:
        """Counted figures per sample: sequences decoded, serial turns, prompt/generated tokens."""
        out: dict[str, dict] = defaultdict(lambda: {"lmm_calls": 0, "lmm_serial_turns": 0, "prompt_tokens": 0,
                                                     "generated_tokens": 0, "cache_hits": 0})
        for r in self.records:
            s = out[r["sample_id"]]
            if r["cached"]:
                s["cache_hits"] += 1
                continue
            s["lmm_calls"] += 1
            s["lmm_serial_turns"] = max(s["lmm_serial_turns"], r["turn"])
            s["prompt_tokens"] += r["prompt_tokens"]
            s["generated_tokens"] += r["generated_tokens"]
        return dict(out)

    def totals(self) -> dict:
        fresh = [r for r in self.records if not r["cached"]]
        return {"lmm_calls": len(fresh), "cache_hits": len(self.records) - len(fresh),
                "prompt_tokens": sum(r["prompt_tokens"] for r in fresh),
                "generated_tokens": sum(r["generated_tokens"] for r in fresh)}


def _image_digest(img) -> str:
    buf = io.BytesIO()
    buf.write(f"{img.mode}{img.size}".encode())
    buf.write(img.tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def request_key(model_id: str, req: Request, greedy: bool) -> str:
    """Cache key: model and revision, prompt version, messages (images by content), schema,
    sampling parameters and seed. The sample id and turn are bookkeeping, not content."""
    msgs = [{"role": m["role"], "content": [
        {"type": "image", "sha": _image_digest(p["image"])} if p["type"] == "image" else p for p in m["content"]]}
        for m in req.messages]
    blob = json.dumps({"model": model_id, "v": PROMPT_VERSION, "messages": msgs, "schema": req.schema,
                       "seed": None if greedy else req.seed, "greedy": greedy, "t": req.temperature,
                       "max": req.max_new_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def token_cap(lm, schema: dict | None, free: bool = False) -> int:
    """Most tokens a request may decode: free text gets ``free_text_tokens``; a schema answer its
    worst-case length (every string and array at its bound) plus a margin, never a fixed cap that
    would cut long structured answers."""
    from kbridge.engine.lmm.grammar import max_chars

    return lm.free_text_tokens if free else (max_chars(schema) or lm.max_new_tokens) + 8


def build_request(cfg, messages: list, schema: dict | None, sample_id: str, stage: str, turn: int,
                  tag: object = "", free: bool = False, temperature: float | None = None) -> Request:
    """The one way a stage makes a request: its seed depends on what the request is for (sample,
    stage, turn, tag such as a candidate id), never on its position in a batch."""
    from kbridge.engine.types import derive_seed

    lm = cfg.lmm
    return Request(messages, schema, derive_seed(cfg.run.seed, sample_id, stage, turn, tag), token_cap(lm, schema, free),
                   lm.temperature if temperature is None else temperature, sample_id, stage, turn)


def parse_json(text: str, schema: dict) -> Any:
    """Strict JSON parse plus the structural checks the callers rely on: an object with the
    schema's required keys, or the array or string a bare-answer schema asks for."""
    value = json.loads(text)
    want = schema.get("type", "object")
    if want == "array" or want == "string":
        if not isinstance(value, list if want == "array" else str):
            raise ValueError(f"answer is not the {want} the schema asks for")
        return value
    if not isinstance(value, dict) or not set(schema.get("required", [])) <= set(value):
        raise ValueError("answer does not match the schema's required keys")
    return value


class LMMClient:
    """Cache, validation and retries, and the request log, over any backend."""

    def __init__(self, backend: Backend, request_log: RequestLog, cache=None, greedy: bool = False,
                 retries: int = 2, special=None):
        from kbridge.engine.lmm.special import pattern_for

        self.backend, self.log, self.cache = backend, request_log, cache
        self.greedy, self.retries = greedy, retries
        self.special = special if special is not None else pattern_for(backend)
        """The backend's special tokens: neutralised in every text part before a request goes out."""

    def using(self, request_log: RequestLog) -> "LMMClient":
        """The same backend, cache and settings, logging into ``request_log`` (one per stage call,
        so each row's requests are known without scanning a run-wide log)."""
        return LMMClient(self.backend, request_log, self.cache, self.greedy, self.retries, self.special)

    async def complete(self, requests: Sequence[Request]) -> list[Response]:
        from dataclasses import replace

        from kbridge.engine.lmm.special import neutralise_messages

        # user text can never inject the model's special tokens, whichever backend and path
        requests = [replace(r, messages=neutralise_messages(r.messages, self.special)) for r in requests]
        now = time.time()
        out: list[Response | None] = [None] * len(requests)
        keys = [request_key(self.backend.model_id, r, self.greedy) for r in requests]
        todo = []
        for i, (req, key) in enumerate(zip(requests, keys)):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = Response(hit["text"], hit.get("parsed"), hit["prompt_tokens"], hit["generated_tokens"], True)
                self.log.add(req, self.backend.model_id, hit["prompt_tokens"], hit["generated_tokens"], True, now, now)
            else:
                todo.append(i)
        attempt = 0
        while todo:
            batch = [requests[i] if attempt == 0 else _reseeded(requests[i], attempt) for i in todo]
            t0 = time.time()
            gens = await self.backend.generate(batch)
            t1 = time.time()
            retry = []
            for i, req, gen in zip(todo, batch, gens):
                if gen.error is not None:  # the backend already retried; nothing was decoded
                    out[i] = Response("", None, 0, 0, False, gen.error)
                    continue
                self.log.add(req, self.backend.model_id, gen.prompt_tokens, gen.generated_tokens, False, t0, t1,
                             gen.engine)
                parsed, err = None, None
                if req.schema is not None:
                    try:
                        parsed = parse_json(gen.text, req.schema)
                    except ValueError as e:
                        err = f"invalid JSON answer ({e})"
                if err and attempt < self.retries:
                    log.warning("%s: %s; retrying with another seed", req.sample_id, err)
                    retry.append(i)
                    continue
                out[i] = Response(gen.text, parsed, gen.prompt_tokens, gen.generated_tokens, False, err)
                if err is None and self.cache is not None:
                    self.cache.put(keys[i], {"text": gen.text, "parsed": parsed, "prompt_tokens": gen.prompt_tokens,
                                             "generated_tokens": gen.generated_tokens})
            todo, attempt = retry, attempt + 1
        return out  # type: ignore[return-value]


def _reseeded(req: Request, attempt: int) -> Request:
    from dataclasses import replace

    return replace(req, seed=(req.seed + 7919 * attempt) % (2**63))
