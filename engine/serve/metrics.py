"""Prometheus series of the service, every name prefixed ``kbridge_``, on a registry of its own
(several services in one process do not share counts).

Requests by final status and HTTP answers by code; queue depth per stage (set at scrape time from
the executor's queues); rows per stage call (the micro-batch each stage actually formed); latency
histograms end to end (request received → result) and per stage, both split by the missing
modality; LMM sequences and tokens; UNet evaluations and VAE decodes.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kbridge_requests", "Requests by final status (done, error, cancelled, "
                                "rejected: admission queue full).", ["status"], registry=r)
        self.http = Counter("kbridge_http_responses", "HTTP answers by route and status code.",
                            ["route", "code"], registry=r)
        self.queue = Gauge("kbridge_queue_depth", "Rows waiting at each stage (admission: waiting for a "
                           "pipeline slot).", ["stage"], registry=r)
        self.active = Gauge("kbridge_requests_active", "Requests admitted and not finished.", registry=r)
        self.ready = Gauge("kbridge_ready", "1 when the models are loaded and requests are admitted.", registry=r)
        self.batch = Histogram("kbridge_batch_rows", "Rows per stage call (micro-batch size).", ["stage"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("kbridge_request_latency_seconds", "End to end: request received → result.",
                                 ["missing"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("kbridge_stage_latency_seconds", "Seconds of one row's stage call.",
                                       ["stage", "missing"], buckets=LATENCY_BUCKETS, registry=r)
        self.lmm_calls = Counter("kbridge_lmm_sequences", "LMM sequences decoded (cache hits excluded).", registry=r)
        self.tokens = Counter("kbridge_lmm_tokens", "LMM tokens by kind (prompt, generated).", ["kind"], registry=r)
        self.unet = Counter("kbridge_unet_evals", "UNet evaluations (per image; a CFG pair counts 2).", registry=r)
        self.vae = Counter("kbridge_vae_decodes", "VAE decodes.", registry=r)

    def stage_call(self, stage: str, rows) -> None:
        self.batch.labels(stage=stage).observe(len(rows))
        for r in rows:
            if r.timings and r.timings[-1][0] == stage:
                _, a, b = r.timings[-1]
                self.stage_latency.labels(stage=stage, missing=r.missing or "none").observe(b - a)

    def finished(self, job, row) -> None:
        self.requests.labels(status=job.status).inc()
        if row.error is None:
            self.latency.labels(missing=row.missing or "none").observe(job.finished - job.created)
        c = row.counts()
        self.lmm_calls.inc(c["lmm_calls"])
        self.tokens.labels(kind="prompt").inc(c["prompt_tokens"])
        self.tokens.labels(kind="generated").inc(c["generated_tokens"])
        self.unet.inc(c["unet_evals"])
        self.vae.inc(c["vae_decodes"])

    def render(self, service) -> bytes:
        """The text exposition, with the gauges read now."""
        for stage, n in service.queue_depths().items():
            self.queue.labels(stage=stage).set(n)
        self.active.set(service.active)
        self.ready.set(1 if service.ready and not service.draining else 0)
        return generate_latest(self.registry)
