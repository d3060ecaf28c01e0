"""The HTTP layer of ``kbridge serve`` (FastAPI): JSON and uploads in, Rows to the service, JSON out.

Routes: ``GET /health`` (503 until the models are loaded), ``GET /metrics`` (Prometheus text),
``POST /v1/complete`` (wait for the result), ``POST /v1/jobs`` + ``GET /v1/jobs/{id}`` +
``GET /v1/jobs/{id}/events`` (server-sent events, one per finished stage), ``GET /v1/files/…``
(generated images when ``"images": "url"``), ``DELETE /v1/jobs/{id}`` (cancel: its render stops
at the next denoising step, its LMM requests are aborted). Everything under /v1 needs the API key
when one is set (Bearer token, compared in constant time). Bodies are read with a size cap and a
deadline before parsing; texts are limited in the LMM's tokens, images fully decoded at intake.
Every error, whatever its status, is ``{"error": {"message", "type", "code"}}`` (``formats.error_body``).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kbridge.engine.serve.formats import Files, error_body, event_of, failure_of, result_of
from kbridge.engine.serve.intake import BODY_DOC, decode_image, parse, short_name  # noqa: F401 (decode_image: bench)
from kbridge.engine.serve.jobs import BadRequest, Job, NotReady, QueueFull, Service
from kbridge.engine.serve.metrics import Metrics

log = logging.getLogger(__name__)


def _error(status: int, message: str, code: str | None = None, **headers) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers or None)


def create_app(svc: Service, api_key: str | None = None, drain_timeout_s: float | None = None) -> FastAPI:
    metrics: Metrics = svc.metrics
    files = Files(svc.limits.files_ttl_s, int(svc.limits.files_max_mb * 1024 * 1024))

    @asynccontextmanager
    async def lifespan(app):
        # models load in the background, so /health answers 503 while they do
        starting = asyncio.ensure_future(svc.start())
        sweeper = asyncio.ensure_future(_sweep(svc, files))
        yield
        sweeper.cancel()
        await starting
        await svc.drain(drain_timeout_s)

    app = FastAPI(title="kbridge serve", lifespan=lifespan,
                  description="Missing-modality completion as a service. /health and /metrics need no key; "
                              "every /v1 route needs `Authorization: Bearer <key>` when the server has one. "
                              'Every error is {"error": {"message", "type", "code"}}.')

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        h = request.headers.get("authorization", "")
        token = h[7:] if h[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), api_key.encode()):
            raise BadRequest("missing or wrong API key (Authorization: Bearer <key>)", 401, "api_key")

    @app.exception_handler(BadRequest)
    async def bad(request, e: BadRequest):
        return _error(e.status, str(e), e.code, **({"WWW-Authenticate": "Bearer"} if e.status == 401 else {}))

    @app.exception_handler(QueueFull)
    async def full(request, e: QueueFull):
        return _error(429, str(e), e.code, **{"Retry-After": str(e.retry_after)})

    @app.exception_handler(NotReady)
    async def not_ready(request, e: NotReady):
        return _error(503, str(e), "draining" if svc.draining else "not_ready", **{"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def gone(request, e):
        return _error(499, "the client closed the connection", "client_gone")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        msg = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(
            e.status_code, str(e.detail) if isinstance(e.detail, str) else "HTTP error")
        return _error(e.status_code, msg, None, **(e.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return _error(422, "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()), None)

    @app.exception_handler(Exception)
    async def crashed(request, e: Exception):
        log.error("unexpected error on %s", request.url.path, exc_info=e)
        return _error(500, f"internal error: {type(e).__name__}", None)

    @app.head("/health", include_in_schema=False)
    @app.get("/health", summary="Readiness: 200 when requests are admitted and the pipeline moves; 503 with "
             "the reason while loading, draining, or stuck.")
    async def health(request: Request):
        why = svc.unready()
        body = {"status": "ok", "profile": svc.cfg.profile, "active": svc.active} if why is None else \
            {"status": "unavailable", "reason": why}
        return JSONResponse(body if request.method == "GET" else None, status_code=200 if why is None else 503)

    @app.head("/metrics", include_in_schema=False)
    @app.get("/metrics", summary="Prometheus text format; every name starts with kbridge_.")
    async def prom(request: Request):
        data = metrics.render(svc)
        return Response(data if request.method == "GET" else b"", media_type="text/plain; version=0.0.4; charset=utf-8")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @v1.post("/complete", openapi_extra=BODY_DOC, summary="Complete one sample and wait for the result.",
             responses={400: {}, 401: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}})
    async def complete(request: Request):
        sample, ov, images, cost = await parse(request, svc)
        job = svc.submit(sample, ov, images, cost)
        deadline = time.monotonic() + svc.limits.request_timeout_s
        while job.row is None:
            try:
                await asyncio.wait_for(job.changed.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            if job.row is not None:
                break
            if await request.is_disconnected():  # the client is gone: its work stops now (render: next step)
                svc.cancel(job)
                return _error(499, "the client closed the connection", "client_gone")
            if time.monotonic() > deadline:
                svc.cancel(job)
                return _error(504, f"request timed out after {svc.limits.request_timeout_s:g} s (request_timeout_s)",
                              "request_timeout_s")
        if job.row.error is not None:
            status, body = failure_of(job.row)
            return JSONResponse(body, status_code=status)
        return await asyncio.to_thread(result_of, job, job.row, files)

    @v1.post("/jobs", status_code=202, openapi_extra=BODY_DOC, summary="Start a job; follow it with /events.")
    async def submit(request: Request):
        sample, ov, images, cost = await parse(request, svc)
        job = svc.submit(sample, ov, images, cost)
        return JSONResponse({"id": job.id, "status": job.status, "sample_id": sample.sample_id,
                             "events": f"/v1/jobs/{job.id}/events"}, status_code=202)

    def _job(job_id: str) -> Job:
        job = svc.get(job_id)
        if job is None:
            raise BadRequest(f"no job {short_name(job_id)} (unknown or expired)", 404, "job")
        return job

    @v1.get("/jobs/{job_id}", summary="A job's status, and its result once done.")
    async def job_status(job_id: str):
        job = _job(job_id)
        out = {"id": job.id, "status": job.status, "sample_id": job.sample.sample_id,
               "stages": [s for s, _ in job.events]}
        if job.row is not None:
            if job.row.error is None:
                out["result"] = await asyncio.to_thread(result_of, job, job.row, files)
            else:
                out["error"] = failure_of(job.row)[1]
        return out

    @v1.delete("/jobs/{job_id}", summary="Cancel a job: its render stops at the next denoising step, its LMM "
               "requests are aborted, its slot is freed.")
    async def job_cancel(job_id: str):
        job = _job(job_id)
        svc.cancel(job)
        return {"id": job.id, "status": "cancelled" if job.cancelled else job.status}

    @v1.get("/jobs/{job_id}/events", summary="Server-sent events: one per finished stage, then result or error.")
    async def job_events(job_id: str, request: Request):
        job = _job(job_id)

        async def gen():
            sent, n = 0, 0
            while True:
                changed = job.changed
                while sent < len(job.events):
                    stage, row = job.events[sent]
                    sent += 1
                    for name, data in event_of(stage, row, job):
                        n += 1
                        yield f"id: {n}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                if job.row is not None:
                    if job.row.error is None:
                        data = await asyncio.to_thread(result_of, job, job.row, files)
                        yield f"id: {n + 1}\nevent: result\ndata: {json.dumps(data)}\n\n"
                    else:
                        yield f"id: {n + 1}\nevent: error\ndata: {json.dumps(failure_of(job.row)[1])}\n\n"
                    return
                await changed.wait()

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @v1.get("/files/{job_id}/{name}", summary="A generated image (PNG), kept for [serve] files_ttl_s.")
    async def file(job_id: str, name: str):
        data = files.get(f"{job_id}/{name}")
        if data is None:
            raise BadRequest(f"no file {short_name(job_id)}/{short_name(name)} (unknown or expired)", 404, "file")
        return Response(data, media_type="image/png")

    app.include_router(v1)
    app.add_middleware(_Count, metrics=metrics)
    return app


async def _sweep(svc: Service, files: Files) -> None:
    """Evicts expired files and finished jobs on a timer (not only when a request looks)."""
    period = max(1.0, min(60.0, svc.limits.files_ttl_s / 4))
    while True:
        await asyncio.sleep(period)
        files.evict()
        svc.prune()


class _Count:
    """HTTP answers by route and code, every answer counted (an exception that escapes the app is
    counted as the 500 it becomes). Plain ASGI: a BaseHTTPMiddleware would hide client disconnects
    from the handlers."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        code = []

        async def sending(message):
            if message["type"] == "http.response.start":
                code.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            code.append(500)
            raise
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.http.labels(route=route, code=str(code[0] if code else 499)).inc()


class _Server:
    """uvicorn's server with a drain: the first SIGTERM / SIGINT stops admission (/health: 503
    "draining") while it keeps listening; it exits once the admitted work is done or at
    ``drain_timeout_s``, and a timer ends the process ``grace`` seconds after that whatever is
    still running (a stuck render thread cannot hold it). A second signal exits at once."""

    def __new__(cls, config, svc: Service, grace: float = 10.0):
        import os
        import signal
        import threading

        import uvicorn

        class Server(uvicorn.Server):
            drain_from: float | None = None

            def handle_exit(self, sig, frame):
                if self.drain_from is not None or sig not in (signal.SIGTERM, signal.SIGINT):
                    return super().handle_exit(sig, frame)
                self._captured_signals.append(sig)
                self.drain_from = time.monotonic()
                svc.draining = True
                limit = svc.limits.drain_timeout_s
                log.warning("draining: %d requests admitted; exiting within %g s", svc.active, limit)
                t = threading.Timer(limit + grace, lambda: (log.error("drain deadline passed: exiting"),
                                                            os._exit(1)))
                t.daemon = True
                t.start()

            async def on_tick(self, counter: int) -> bool:
                if self.drain_from is not None and not self.should_exit:
                    late = time.monotonic() - self.drain_from > svc.limits.drain_timeout_s
                    if late:  # what is left is cancelled: waiting requests get their answer now
                        for job in list(svc.jobs.values()):
                            svc.cancel(job)
                    if late or svc.active == 0:
                        self.should_exit = True
                return await super().on_tick(counter)

        return Server(config)


def uvicorn_config(app, host: str, port: int, limits, **kw):
    """uvicorn settings of the service: h11 with the header deadline, quiet logs."""
    import uvicorn

    from kbridge.engine.serve.protocol import with_header_deadline

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          http=with_header_deadline(limits.header_timeout_s), **kw)


def serve(engine, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          on_listen=None, trace=None) -> Service:
    """Run the service until SIGTERM / SIGINT: admission stops (/health 503 "draining"), admitted
    jobs finish for up to [serve] drain_timeout_s (then they are cancelled), and the process exits,
    at the latest a few seconds after that deadline. Returns the drained service (its jobs say how
    each ended). ``trace``: ``engine.trace.TraceOptions`` (``--trace``)."""
    import signal
    import threading

    import uvicorn

    from kbridge.engine.trace import Tracer

    svc = Service(engine, Metrics(), Tracer(trace, {"serve": f"{host}:{port}"}) if trace else None)
    lim = svc.limits
    grace = 10.0
    app = create_app(svc, api_key, drain_timeout_s=grace / 3)
    server = _Server(uvicorn_config(app, host, port, lim, timeout_graceful_shutdown=int(grace / 3)), svc, grace)
    if on_listen:
        on_listen(host, port)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has shut down; a drained stop exits 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run()
    return svc
