"""OpenTelemetry: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a traced run's spans reach an OTLP/HTTP
collector (here a recording server decoding the protobuf requests), one trace per sample, and the
HTTP LMM backend sends each request's W3C ``traceparent`` so the LMM server's spans join the
sample's trace (here the recording OpenAI-compatible test server shows the header it got)."""
import dataclasses

import pytest

from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.otlp import Collector
from tests.helpers.openai_server import LMMServer
from kbridge.engine.api import Engine
from kbridge.engine.trace import TraceOptions

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[otel]')")
pytestmark = pytest.mark.http


def test_spans_reach_the_collector_and_the_lmm_requests_carry_the_samples_traceparent(
        cfg, engine, tmp_path, monkeypatch):
    loaded = engine.models()
    with Collector() as col, LMMServer(FakeLMM()) as lmm:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", col.url.removesuffix("/v1/traces"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        eng = Engine(dataclasses.replace(cfg, lmm=dataclasses.replace(cfg.lmm, backend="http", url=lmm.url)))
        eng.loaders.update(scorer=lambda _: loaded.scorer, generators=lambda _: loaded.generators)
        out = tmp_path / "o"
        rep = eng.run(out=out, limit=4, trace=TraceOptions(out / "trace.json.gz"))
        assert rep.completed == 4 and not rep.errors
        headers = list(lmm.headers)
    roots = [s for s in col.spans if s.name == "kbridge sample"]
    assert len(roots) == 4
    by_trace = {s.trace_id.hex(): s for s in roots}
    assert len(by_trace) == 4  # one trace per sample
    stages = {s.name for s in col.spans if s.trace_id.hex() in by_trace and s.parent_span_id == by_trace[
        s.trace_id.hex()].span_id}
    assert {"load", "extract", "write", "rank", "lmm extract"} <= stages
    sent = [h["traceparent"] for h in headers]
    assert len(sent) == rep.lmm["lmm_calls"] and all(len(t.split("-")) == 4 for t in sent)
    # every LMM request names one of the samples' traces and, as its parent, the sample's root span
    # (exported with exactly those ids: the LMM server's request span nests under it)
    assert all(not s.parent_span_id for s in roots)
    for tp in sent:
        _, trace_id, parent, flags = tp.split("-")
        assert trace_id in by_trace and flags == "01"
        assert parent == by_trace[trace_id].span_id.hex()
