"""The trace's spans to OpenTelemetry, when the user configures an OTLP exporter with the standard
``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``; the protocol from
``OTEL_EXPORTER_OTLP_PROTOCOL``, ``http/protobuf`` by default). Needs the ``otel`` extra
(``opentelemetry-sdk`` and the OTLP exporter); without it a warning says so and the run goes on.

Each sample is one OTel trace: a root span ``kbridge sample`` with a child per stage and per LMM
request, timed from the row's own timings. The HTTP LMM backend sends the sample's
``traceparent`` (W3C) on its requests (``traceparent(sample_id)``), so a vLLM server with
``--otlp-traces-endpoint`` puts its request span (``llm_request``) in the same trace, as a child
of the sample's root span. The root's trace and span ids are derived from the run and the sample
id (the root is exported with exactly those ids), so the backend and the sink agree without
passing context around.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading

log = logging.getLogger(__name__)

_RUN_SALT = os.urandom(8).hex()
"""Per process: two runs of the same sample get different OTel trace ids."""


def trace_id(sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{_RUN_SALT}|{sample_id}".encode()).digest()[:16], "big") or 1


def root_span_id(sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"root|{_RUN_SALT}|{sample_id}".encode()).digest()[:8], "big") or 1


def traceparent(sample_id: str) -> str:
    """The W3C ``traceparent`` header for requests made on behalf of ``sample_id``."""
    return f"00-{trace_id(sample_id):032x}-{root_span_id(sample_id):016x}-01"


def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _ns(t: float) -> int:
    return int(t * 1e9)


def _pinned_ids():
    """The SDK's random id generator, except for the next span started after ``pin(trace, span)``
    on the same thread: it gets exactly those ids (a sample's root span, the parent its LMM
    requests' ``traceparent`` named)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class Pinned(RandomIdGenerator):
        def __init__(self):
            self.next = threading.local()

        def pin(self, trace: int, span: int) -> None:
            self.next.ids = (trace, span)

        def generate_trace_id(self) -> int:  # asked for a root span only, before its span id
            ids = getattr(self.next, "ids", None)
            return ids[0] if ids else super().generate_trace_id()

        def generate_span_id(self) -> int:
            ids = getattr(self.next, "ids", None)
            if ids:
                self.next.ids = None
                return ids[1]
            return super().generate_span_id()

    return Pinned()


class OtelBridge:
    def __init__(self, provider, tracer, ids=None):
        self.provider, self.tracer, self.ids = provider, tracer, ids

    @classmethod
    def create(cls, exporter=None) -> "OtelBridge | None":
        """A bridge exporting to ``exporter`` (default: the OTLP exporter the OTEL_* variables set up)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("OTEL_EXPORTER_OTLP_* is set but opentelemetry-sdk is not installed "
                        "(pip install 'kbridge[otel]'): spans go to the trace file only")
            return None
        if exporter is None:
            proto = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or \
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            try:
                if proto == "grpc":
                    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
                else:
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("the OTLP %s exporter is not installed (pip install 'kbridge[otel]'): "
                            "spans go to the trace file only", proto)
                return None
            exporter = OTLPSpanExporter()  # endpoint, headers, timeout from the OTEL_* variables
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "kbridge")})
        ids = _pinned_ids()
        provider = TracerProvider(resource=resource, id_generator=ids)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, provider.get_tracer("kbridge"), ids)

    def span(self, name: str, a: float, b: float, attrs: dict) -> None:
        s = self.tracer.start_span(name, start_time=_ns(a), attributes=attrs)
        s.end(end_time=_ns(b))

    def sample(self, row, written: float) -> None:
        """The sample's spans under one trace: the root has the trace and span ids of the sample's
        ``traceparent``, so the LMM server's request spans, started from it, are its children."""
        from opentelemetry.context import Context

        start = row.admitted or written
        self.ids.pin(trace_id(row.sample_id), root_span_id(row.sample_id))
        root = self.tracer.start_span("kbridge sample", context=Context(), start_time=_ns(start),
                                      attributes={"kbridge.sample_id": row.sample_id,
                                                  "kbridge.missing": str(row.missing),
                                                  "kbridge.error": row.error.message if row.error else ""})
        from opentelemetry import trace

        inner = trace.set_span_in_context(root)
        for stage, a, b in row.timings:
            self.tracer.start_span(stage, context=inner, start_time=_ns(a)).end(end_time=_ns(b))
        for r in row.lmm:
            if not r.cached:
                s = self.tracer.start_span(f"lmm {r.stage}", context=inner, start_time=_ns(r.start),
                                           attributes={"kbridge.turn": r.turn, "gen_ai.usage.input_tokens":
                                                       r.prompt_tokens, "gen_ai.usage.output_tokens":
                                                       r.generated_tokens})
                s.end(end_time=_ns(r.end))
        root.end(end_time=_ns(written))

    def close(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()


def trace_headers(sample_id: str) -> dict | None:
    """The ``traceparent`` header for an LMM request of ``sample_id`` when OTel export is on (the
    HTTP backend sends it; a vLLM server with OTLP tracing continues the sample's trace)."""
    return {"traceparent": traceparent(sample_id)} if enabled() else None
