"""An OTLP/HTTP traces receiver on 127.0.0.1 that keeps every span it is sent (decoded with
``opentelemetry-proto``, which the OTLP exporters pull in): kbridge's own spans and an LMM
server's (vLLM with ``--otlp-traces-endpoint``) land in one place for a test to read."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Collector:
    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list = []
        """Every span received (``opentelemetry.proto.trace.v1.Span``), in arrival order."""
        lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with lock:
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            outer.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The OTLP/HTTP traces endpoint (any path is accepted)."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/traces"

    def named(self, name: str) -> list:
        return [s for s in list(self.spans) if s.name == name]

    def wait_for(self, name: str, n: int, timeout: float = 30.0) -> list:
        """The spans called ``name`` once at least ``n`` have arrived (exporters batch: a few s)."""
        deadline = time.monotonic() + timeout
        while len(self.named(name)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.named(name)

    def __enter__(self) -> "Collector":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
