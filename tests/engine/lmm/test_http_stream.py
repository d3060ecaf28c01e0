"""The HTTP backend reading a streamed answer (SSE chunks, as vLLM's OpenAI server sends them with
``stream_options.include_usage``): the text and usage, vLLM's per-request figures when the last
chunk carries them, else the client's own queue / first-token / decode split; a stream that breaks
off or reports an error is retried like a dropped connection, and a server that no longer answers
at all marks the backend dead. The real server: tests/vllm/test_vllm_http.py."""
from __future__ import annotations

import asyncio
import json

import httpx2 as httpx
import pytest

from kbridge.engine.config import build_config
from kbridge.engine.lmm import Request
from kbridge.engine.lmm.vllm_http import HTTPBackend

REQ = Request([{"role": "user", "content": [{"type": "text", "text": "a red cup"}]}], None, 5, 16, 0.1, "s:0", "probe", 1)


def _sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def _delta(text):
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                                  "prompt_tokens_details": {"cached_tokens": 4}}}


def _backend(handler, retries=1, stream=True):
    cfg = build_config("tiny", overrides={"lmm": {"backend": "http", "url": "http://kb.test/v1", "retries": retries,
                                                  "backoff_s": 0.0, "stream": stream}}).lmm
    b = HTTPBackend(cfg, check=False)
    b.model = "m"
    bodies = []

    def record(request):
        if request.method == "POST":
            bodies.append(json.loads(request.content))
        return handler(request)

    def session():  # the backend's own session, over an in-process transport
        loop = asyncio.get_running_loop()
        if b._loop is not loop:
            b._client = httpx.AsyncClient(transport=httpx.MockTransport(record))
            b._sem, b._loop = asyncio.Semaphore(4), loop
        return b._client, b._sem

    b._session = session
    return b, bodies


def _one(b):
    return asyncio.run(b.generate([REQ]))[0]


def test_a_streamed_answer_without_server_figures_gets_the_clients_split():
    b, bodies = _backend(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, _delta('{"a"'), _delta(': 1}'),
        USAGE, b"[DONE]")))
    g = _one(b)
    assert g.error is None and g.text == '{"a": 1}' and (g.prompt_tokens, g.generated_tokens) == (9, 3)
    assert bodies[0]["stream"] is True and bodies[0]["stream_options"] == {"include_usage": True}
    e = g.engine
    assert e["timing"] == "client" and e["cached_prompt_tokens"] == 4
    assert e["queue_s"] >= 0 and e["first_token_s"] >= 0 and e["decode_s"] >= 0 and "prefill_s" not in e


def test_the_servers_per_request_figures_win_and_the_clients_first_token_stays():
    metrics = {"queue_time_ms": 2.0, "time_to_first_token_ms": 30.0, "generation_time_ms": 120.0}
    b, _ = _backend(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(
        _delta("hi"), {**USAGE, "metrics": metrics}, b"[DONE]")))
    e = _one(b).engine
    assert e["timing"] == "engine" and e["first_token_s"] >= 0
    assert (e["queue_s"], e["prefill_s"], e["decode_s"]) == (0.002, 0.03, 0.12)


def test_an_unstreamed_body_is_read_with_the_servers_figures():
    body = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 2, "completion_tokens": 1},
            "metrics": {"queue_time_ms": 1.0, "time_to_first_token_ms": 5.0, "generation_time_ms": 7.0}}
    b, bodies = _backend(lambda r: httpx.Response(200, json=body), stream=False)
    g = _one(b)
    assert "stream" not in bodies[0] and g.text == "ok"
    assert g.engine == {"cached_prompt_tokens": 0, "timing": "engine", "queue_s": 0.001, "prefill_s": 0.005,
                        "decode_s": 0.007}


@pytest.mark.parametrize("tail, says", [(b"", "before [DONE]"),
                                        (_sse({"error": {"message": "EngineCore died"}}), "EngineCore died")])
def test_a_broken_stream_is_retried_then_the_requests_error(tail, says):
    b, bodies = _backend(lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                  content=_sse(_delta("{")) + tail) if r.method == "POST"
                         else httpx.Response(200, json={"data": [{"id": "m"}]}))
    g = _one(b)
    assert g.error and says in g.error and len(bodies) == 2, g.error  # one retry, then given up
    assert b.dead is None  # the server still lists its models: not dead


def test_a_server_gone_marks_the_backend_dead_and_later_requests_fail_at_once():
    def gone(request):
        raise httpx.ConnectError("connection refused")

    b, bodies = _backend(gone)
    g = _one(b)
    assert g.error and "ConnectError" in g.error and b.dead and "is gone" in b.dead
    assert len(bodies) == 2  # tried, retried once, then GET /models failed too
    again = _one(b)
    assert again.error == f"LMM server: {b.dead}" and len(bodies) == 2  # no request was sent
