"""Trace context into the real vLLM server: a traced run with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set
sends each LMM request its sample's W3C ``traceparent``; the session's server (``kbridge lmm serve
--otlp-traces-endpoint``, http/protobuf) exports one ``llm_request`` span per request, and each
lands in the sample's trace as a child of kbridge's own ``kbridge sample`` span, inside its time
window — one trace per sample across both processes (engine/trace/otel.py)."""
from __future__ import annotations

import time

import pytest

from tests.helpers.jsonl import read_jsonl
from tests.vllm.vllm_helpers import engine_on

pytestmark = pytest.mark.vllm

SKEW_S = 0.1
"""Both processes read the same clock; vLLM stamps a request's span when it has its last token."""


def test_vllm_request_spans_join_the_samples_trace(http_cfg, engine, otlp, tmp_path, monkeypatch):
    from kbridge.engine.lmm.vllm_http import HTTPBackend
    from kbridge.engine.trace import TraceOptions
    from kbridge.engine.trace.otel import root_span_id, trace_id, traceparent

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url.removesuffix("/v1/traces"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    out = tmp_path / "traced"
    rep = engine_on(http_cfg, engine, HTTPBackend(http_cfg.lmm)).run(out=out, limit=2,
                                                                     trace=TraceOptions(out / "trace.json.gz"))
    assert rep.completed == 2 and not rep.errors and rep.lmm["lmm_calls"] > 0
    sids = [r["sample_id"] for r in read_jsonl(out / "results.jsonl")]
    ours = {trace_id(s).to_bytes(16, "big"): s for s in sids}
    roots = {s.trace_id: s for s in otlp.named("kbridge sample") if s.trace_id in ours}
    assert len(roots) == 2  # exported when the run closed its tracer
    for tid, root in roots.items():  # the root carries exactly the ids of the traceparent sent
        sid = ours[tid]
        assert root.span_id == root_span_id(sid).to_bytes(8, "big") and not root.parent_span_id
        assert traceparent(sid) == f"00-{tid.hex()}-{root.span_id.hex()}-01"

    deadline = time.monotonic() + 60
    while True:  # vLLM's exporter sends in batches (every 0.2 s here)
        spans = [s for s in otlp.named("llm_request") if s.trace_id in ours]
        if len(spans) >= rep.lmm["lmm_calls"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(spans) == rep.lmm["lmm_calls"]  # one server span per request kbridge sent, none lost
    for s in spans:
        root = roots[s.trace_id]
        assert s.parent_span_id == root.span_id  # a child of our span, not a trace of its own
        assert s.kind == s.SPAN_KIND_SERVER
        assert root.start_time_unix_nano - SKEW_S * 1e9 <= s.start_time_unix_nano <= s.end_time_unix_nano \
            <= root.end_time_unix_nano + SKEW_S * 1e9
    attrs = {a.key for a in spans[0].attributes}
    assert {"gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"} <= attrs, attrs
