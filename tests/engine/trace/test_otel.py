"""OpenTelemetry: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a traced run's spans reach an OTLP/HTTP
collector (here a recording server decoding the protobuf requests), one trace per sample, and the
HTTP LMM backend sends each request's W3C ``traceparent`` so the LMM server's spans join the
sample's trace (here the recording OpenAI-compatible test server shows the header it got)."""
import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.openai_server import LMMServer
from kbridge.engine.api import Engine
from kbridge.engine.trace import TraceOptions

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[otel]')")
pytestmark = pytest.mark.http


class Collector:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        outer.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_spans_reach_the_collector_and_the_lmm_requests_carry_the_samples_traceparent(
        cfg, engine, tmp_path, monkeypatch):
    loaded = engine.models()
    with Collector() as col, LMMServer(FakeLMM()) as lmm:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{col.httpd.server_address[1]}")
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
    # every LMM request names one of the samples' traces and the span the sample's root hangs from
    for tp in sent:
        _, trace_id, parent, flags = tp.split("-")
        assert trace_id in by_trace and flags == "01"
        assert parent == by_trace[trace_id].parent_span_id.hex()
