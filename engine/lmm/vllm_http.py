"""The LMM over HTTP: an async client for any OpenAI-compatible server (``vllm serve``, SGLang,
llama.cpp's server).

Every request is sent on its own (stateless, single-turn: the whole message list each time) and
many are in flight at once under ``lmm.concurrency``; the server batches them continuously and
reuses the shared prompt prefix (system prompt and instructions first, sample content last).
Connection errors, timeouts and 5xx answers are retried with exponential backoff; what still fails
comes back as ``Generation.error`` for that request alone, so one sample fails and the run goes on.
Schema requests carry ``response_format: json_schema``; every request carries its own seed.
Each request's record says where its time went: vLLM's own queue / prefill / decode figures where
the server returns them (``--enable-per-request-metrics``, which ``kbridge lmm serve`` sets), and
from the streamed answer (``lmm.stream``) the client's first-token time; from a server that
returns no figures, the client's own queue (a connection slot) / first-token / decode split.
A request that failed every retry while the server no longer lists its models marks the backend
``dead``: later requests fail at once, and the executor stops admitting samples.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Sequence

import httpx2 as httpx  # the successor of httpx, already required by huggingface-hub

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request
from kbridge.engine.lmm.openai_format import response_format, to_openai
from kbridge.engine.errors import Unavailable
from kbridge.engine.trace.otel import trace_headers

log = logging.getLogger(__name__)


class LMMUnavailable(Unavailable, RuntimeError):
    """The LMM server cannot be reached or refuses us (checked once, before a run starts)."""


class _Retryable(Exception):
    """A transport failure or a server-side (5xx) error: worth another try."""


def _headers(cfg: LMMConfig) -> dict:
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


class HTTPBackend:
    """``model_id`` and ``async generate(requests)`` over an OpenAI-compatible ``/chat/completions``."""

    continuous_batching = True
    """The server batches requests as they arrive: the executor sends each row's requests alone."""

    def __init__(self, cfg: LMMConfig, check: bool = True):
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.model = cfg.served_model
        self.model_id = f"http:{self.model}" if self.model else "http:?"
        self.dead: str | None = None
        """Set when a request failed every retry and the server no longer answers GET /models."""
        self._encoded: dict = {}
        self._loop = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        if check:
            self.check()

    def check(self) -> None:
        """GET /models once: the server is up, accepts our key, and serves the model we name."""
        try:
            r = httpx.get(f"{self.url}/models", headers=_headers(self.cfg), timeout=min(self.cfg.timeout_s, 10.0))
        except httpx.HTTPError as e:
            raise LMMUnavailable(f"cannot reach the LMM server at {self.url} ({type(e).__name__}: {e}); "
                                 "start it (kbridge lmm serve) or check --lmm") from e
        if r.status_code in (401, 403):
            raise LMMUnavailable(f"the LMM server at {self.url} refused the API key (HTTP {r.status_code}); "
                                 f"set ${self.cfg.api_key_env}")
        if r.status_code != 200:
            raise LMMUnavailable(f"the LMM server at {self.url} answered HTTP {r.status_code} to GET /models")
        try:
            names = [m["id"] for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError) as e:
            raise LMMUnavailable(f"{self.url}/models is not an OpenAI-compatible model list") from e
        if not names:
            raise LMMUnavailable(f"the LMM server at {self.url} serves no model")
        if self.model and self.model not in names:
            raise LMMUnavailable(f"the LMM server at {self.url} does not serve {self.model!r} "
                                 f"(it serves: {', '.join(names)})")
        self.model = self.model or names[0]
        # the cache key: answers of one served model are reusable across runs and servers
        self.model_id = f"http:{self.model}"

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """One connection pool and one concurrency limit per event loop (Engine.run starts one)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
            timeout = httpx.Timeout(self.cfg.timeout_s, connect=min(self.cfg.timeout_s, 10.0))
            self._client = httpx.AsyncClient(headers=_headers(self.cfg), timeout=timeout, limits=limits)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
            self._loop = loop
        return self._client, self._sem  # type: ignore[return-value]

    def body(self, req: Request) -> dict:
        """The JSON body of one request."""
        b = {"model": self.model, "messages": to_openai(req.messages, self.cfg.http_max_pixels, self._encoded),
             "max_tokens": req.max_new_tokens, "seed": req.seed, "n": 1,
             "temperature": 0.0 if self.cfg.greedy else req.temperature, "top_p": 1.0,
             # vLLM's extra sampling fields: a server started without --generation-config vllm applies
             # the checkpoint's generation_config (Qwen2-VL: top_k=1, i.e. greedy); these undo it
             "top_k": -1, "repetition_penalty": 1.0}
        if self.cfg.stream:  # the answer in pieces: its first-token time is measured here
            b.update(stream=True, stream_options={"include_usage": True})
        fmt = response_format(req.schema)
        if fmt is not None:
            b["response_format"] = fmt
        return b

    async def generate(self, requests: Sequence[Request]) -> list[Generation]:
        client, sem = self._session()
        return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: Request) -> Generation:
        if self.dead:  # seen gone already: no request, no retries (the run stops admitting)
            return Generation("", 0, 0, error=f"LMM server: {self.dead}")
        body = self.body(req)
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            try:
                queued = time.monotonic()
                async with sem:
                    return await self._post(client, body, trace_headers(req.sample_id), time.monotonic() - queued)
            except _Retryable as e:
                if attempt == self.cfg.retries:
                    await self._probe(client, e)
                    return Generation("", 0, 0, error=f"LMM server: {e} (after {attempt + 1} attempts)")
                log.warning("%s: LMM request failed (%s); retry %d/%d in %.2f s", req.sample_id, e, attempt + 1,
                            self.cfg.retries, delay)
            except ValueError as e:  # a 4xx answer or a malformed body: another try would not help
                return Generation("", 0, 0, error=f"LMM server: {e}")
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _probe(self, client: httpx.AsyncClient, e: Exception) -> None:
        """After a request failed every retry: is the server still there (GET /models)? If not it
        is dead for this process (``dead``): later requests fail at once and the run stops admitting."""
        try:
            r = await client.get(f"{self.url}/models", timeout=min(self.cfg.timeout_s, 5.0))
            if r.status_code == 200:
                return
            why = f"HTTP {r.status_code} to GET /models"
        except httpx.HTTPError as pe:
            why = f"{type(pe).__name__}"
        if not self.dead:
            self.dead = f"the server at {self.url} is gone ({e}; then {why})"
            log.error("%s: no more samples are started; re-run once it is back", self.dead)

    async def _post(self, client: httpx.AsyncClient, body: dict, headers: dict | None = None,
                    queued_s: float = 0.0) -> Generation:
        t0 = time.monotonic()
        try:
            async with client.stream("POST", f"{self.url}/chat/completions", json=body, headers=headers) as r:
                if r.status_code >= 500 or r.status_code == 429:
                    raise _Retryable(f"HTTP {r.status_code}")
                if r.status_code != 200:
                    await r.aread()
                    raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
                if r.headers.get("content-type", "").startswith("text/event-stream"):
                    text, usage, metrics, first, last = await _read_stream(r)
                else:  # one JSON body (not asked to stream, or a server that cannot)
                    first = last = None
                    text, usage, metrics = _read_body(await r.aread())
        except httpx.TimeoutException as e:
            raise _Retryable(f"timed out after {self.cfg.timeout_s:g} s") from e
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        # vLLM with --enable-prompt-tokens-details: prompt tokens served from its prefix cache
        cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        engine = {"cached_prompt_tokens": cached, **server_timings(metrics)}
        if first is not None:  # measured here: sent → first token holds the server's queue and prefill
            engine["first_token_s"] = round(first - t0, 6)
            if "decode_s" not in engine:  # no figures from the server: the client's own split
                engine.update(timing="client", queue_s=round(queued_s, 6), decode_s=round(last - first, 6))
        return Generation(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          engine=engine)


def server_timings(metrics: dict | None) -> dict:
    """vLLM's per-request figures (a server started with ``--enable-per-request-metrics``, as
    ``kbridge lmm serve`` does: ``metrics`` in the body or the last streamed chunk) as the
    in-process backend records them: queue, prefill (scheduled → first token), decode seconds."""
    out = {}
    for key, name in (("queue_time_ms", "queue_s"), ("time_to_first_token_ms", "prefill_s"),
                      ("generation_time_ms", "decode_s")):
        v = (metrics or {}).get(key)
        if isinstance(v, (int, float)) and v >= 0:
            out[name] = round(v / 1000.0, 6)
    return {"timing": "engine", **out} if out else {}


def _read_body(raw: bytes) -> tuple[str, dict, dict | None]:
    try:
        d = json.loads(raw)
        return d["choices"][0]["message"]["content"] or "", d.get("usage") or {}, d.get("metrics")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
        raise _Retryable(f"malformed response body ({type(e).__name__})") from e


async def _read_stream(r) -> tuple[str, dict, dict | None, float | None, float | None]:
    """An SSE answer (``data: {chunk}`` lines, ``data: [DONE]``): the text, the usage and the
    server's metrics (last chunk, ``stream_options.include_usage``), and when the first and last
    text arrived (monotonic)."""
    parts, usage, metrics, first, last, done = [], {}, None, None, None, False
    async for ln in r.aiter_lines():
        if not ln.startswith("data:"):
            continue
        data = ln[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            d = json.loads(data)
        except json.JSONDecodeError as e:
            raise _Retryable("malformed stream chunk") from e
        if not isinstance(d, dict):
            raise _Retryable("malformed stream chunk")
        if d.get("error"):  # an error after the 200 (vLLM: the engine failed mid-answer)
            err = d["error"]
            raise _Retryable(f"error in the stream: {err.get('message', err) if isinstance(err, dict) else err}")
        for c in d.get("choices") or []:
            piece = (c.get("delta") or {}).get("content")
            if piece:
                now = time.monotonic()
                first = now if first is None else first
                last = now
                parts.append(piece)
        if d.get("usage"):
            usage = d["usage"]
        if d.get("metrics"):
            metrics = d["metrics"]
    if not done:
        raise _Retryable("the stream ended before [DONE]")
    return "".join(parts), usage, metrics, first, last
