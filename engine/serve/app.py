"""The HTTP layer of ``kbridge serve`` (FastAPI): JSON and uploads in, Rows to the service, JSON out.

Routes: ``GET /health`` (503 until the models are loaded), ``GET /metrics`` (Prometheus text),
``POST /v1/complete`` (wait for the result), ``POST /v1/jobs`` + ``GET /v1/jobs/{id}`` +
``GET /v1/jobs/{id}/events`` (server-sent events, one per finished stage), ``GET /v1/files/…``
(generated images when ``"images": "url"``). Everything under /v1 needs the API key when one is
set (Bearer token, compared in constant time). Bodies are read with a size cap before parsing.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import time
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from kbridge.engine.serve.formats import Files, event_of, failure_of, result_of
from kbridge.engine.serve.jobs import BadRequest, Job, NotReady, Overrides, QueueFull, Service, content_id, sample_index
from kbridge.engine.serve.metrics import Metrics
from kbridge.engine.types import Sample


class CompleteRequest(BaseModel):
    """One incomplete sample: the available modality, and what is missing."""

    model_config = ConfigDict(extra="forbid")
    missing: Literal["image", "text"]
    text: str | None = Field(None, description="The available text (when the image is missing).")
    image: str | None = Field(None, description="The available image, base64 PNG/JPEG (when the text is missing); "
                              "a multipart upload field 'image' works too.")
    sample_id: str | None = Field(None, max_length=256, description="Seeds derive from it, as in a run; default: "
                                  "a hash of the content, so the same request gives the same answer.")
    candidates: int | None = Field(None, ge=1, description="Candidates (at most [serve] max_candidates).")
    seed: int | None = Field(None, ge=0, description="Root seed (default: the profile's run.seed).")
    steps: int | None = Field(None, ge=1, description="Denoising steps (at most [serve] max_steps).")
    images: Literal["inline", "url"] = Field("inline", description="Generated images as base64 PNG data URIs, "
                                             "or as URLs under /v1/files/ kept for [serve] files_ttl_s.")


_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CompleteRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"}, "missing": {"type": "string", "enum": ["text", "image"]},
        "text": {"type": "string"}, "sample_id": {"type": "string"}, "candidates": {"type": "integer"},
        "seed": {"type": "integer"}, "steps": {"type": "integer"},
        "images": {"type": "string", "enum": ["inline", "url"]}}, "required": ["missing"]}}}}}


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes (Content-Length or streamed)."""
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise BadRequest(f"request body of {int(n)} bytes is over the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette re-reads a consumed body from here (form parsing)
    return body


def decode_image(data: bytes, max_pixels: int):
    from kbridge.engine.data import normalize_image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise BadRequest(f"image of {im.width}x{im.height} pixels is over the limit of {max_pixels}", 413)
            im.load()
            return normalize_image(im)
    except Image.DecompressionBombError as e:
        raise BadRequest(f"image is over the pixel limit: {e}", 413) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadRequest(f"image is not a readable PNG/JPEG: {e}") from None


async def parse(request: Request, svc: Service) -> tuple[Sample, Overrides, str]:
    lim = svc.limits
    body = await read_body(request, int(lim.max_body_mb * 1024 * 1024))
    ctype = request.headers.get("content-type", "")
    upload = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_part_size=len(body) + 1)
        fields = {}
        for k, v in form.multi_items():
            if k == "image" and hasattr(v, "read"):
                upload = await v.read()
            else:
                fields[k] = v
    else:
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON: {e}") from None
        if not isinstance(fields, dict):
            raise BadRequest("the body must be a JSON object")
    try:
        req = CompleteRequest.model_validate(fields)
    except ValidationError as e:
        raise BadRequest("; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()),
                         422) from None
    if req.image is not None:
        try:
            upload = base64.b64decode(req.image.split(",", 1)[-1] if req.image.startswith("data:") else req.image,
                                      validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadRequest(f"image: not valid base64 ({e})") from None
    if req.missing == "image":
        if not req.text or not req.text.strip():
            raise BadRequest("missing=image needs the available text in 'text'")
        if upload is not None:
            raise BadRequest("missing=image: send the text only (the image is what is missing)")
        if len(req.text) > lim.max_text_chars:
            raise BadRequest(f"text of {len(req.text)} characters is over the limit of {lim.max_text_chars}", 413)
        text, image = req.text.strip(), None
    else:
        if upload is None:
            raise BadRequest("missing=text needs the available image ('image' base64 or a multipart upload)")
        if req.text is not None:
            raise BadRequest("missing=text: send the image only (the text is what is missing)")
        text, image = None, await asyncio.to_thread(decode_image, upload, lim.max_image_pixels)
    sid = req.sample_id or content_id(req.missing, text, upload)
    return (Sample(sid, sample_index(sid), text, image, req.missing), Overrides(req.candidates, req.seed, req.steps),
            req.images)


def create_app(svc: Service, api_key: str | None = None, drain_timeout_s: float | None = None) -> FastAPI:
    metrics: Metrics = svc.metrics
    files = Files(svc.limits.files_ttl_s)

    @asynccontextmanager
    async def lifespan(app):
        # models load in the background, so /health answers 503 while they do
        starting = asyncio.ensure_future(svc.start())
        yield
        await starting
        await svc.drain(drain_timeout_s)

    app = FastAPI(title="kbridge serve", lifespan=lifespan,
                  description="Missing-modality completion as a service. /health and /metrics need no key; "
                              "every /v1 route needs `Authorization: Bearer <key>` when the server has one.")


    async def auth(request: Request) -> None:
        if api_key is None:
            return
        h = request.headers.get("authorization", "")
        token = h[7:] if h[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise BadRequest("missing or wrong API key (Authorization: Bearer <key>)", 401)

    @app.exception_handler(BadRequest)
    async def bad(request, e: BadRequest):
        return _error(e.status, str(e), **({"WWW-Authenticate": "Bearer"} if e.status == 401 else {}))

    @app.exception_handler(QueueFull)
    async def full(request, e: QueueFull):
        return _error(429, str(e), **{"Retry-After": str(e.retry_after)})

    @app.exception_handler(NotReady)
    async def not_ready(request, e: NotReady):
        return _error(503, str(e), **{"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def gone(request, e):
        return Response(status_code=499)

    @app.get("/health", summary="503 until the models are loaded (and while shutting down), then 200.")
    async def health():
        if svc.ready and not svc.draining:
            return {"status": "ok", "profile": svc.cfg.profile, "active": svc.active}
        why = "shutting down" if svc.draining else svc.load_error or "loading models"
        return JSONResponse({"status": why}, status_code=503)

    @app.get("/metrics", summary="Prometheus text format; every name starts with kbridge_.")
    async def prom():
        return Response(metrics.render(svc), media_type="text/plain; version=0.0.4; charset=utf-8")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @v1.post("/complete", openapi_extra=_BODY_DOC, summary="Complete one sample and wait for the result.",
             responses={400: {}, 401: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}})
    async def complete(request: Request):
        sample, ov, images = await parse(request, svc)
        job = svc.submit(sample, ov, images)
        deadline = time.monotonic() + svc.limits.request_timeout_s
        while job.row is None:
            try:
                await asyncio.wait_for(job.changed.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            if job.row is not None:
                break
            if await request.is_disconnected():  # the client is gone: its work stops at the next stage
                svc.cancel(job)
                return Response(status_code=499)
            if time.monotonic() > deadline:
                svc.cancel(job)
                return _error(504, f"request timed out after {svc.limits.request_timeout_s} s")
        if job.row.error is not None:
            status, body = failure_of(job.row)
            return JSONResponse(body, status_code=status)
        return await asyncio.to_thread(result_of, job, job.row, files)

    @v1.post("/jobs", status_code=202, openapi_extra=_BODY_DOC, summary="Start a job; follow it with /events.")
    async def submit(request: Request):
        sample, ov, images = await parse(request, svc)
        job = svc.submit(sample, ov, images)
        return JSONResponse({"id": job.id, "status": job.status, "sample_id": sample.sample_id,
                             "events": f"/v1/jobs/{job.id}/events"}, status_code=202)

    def _job(job_id: str) -> Job:
        job = svc.get(job_id)
        if job is None:
            raise BadRequest(f"no job {job_id!r} (unknown or expired)", 404)
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
            raise BadRequest(f"no file {job_id}/{name} (unknown or expired)", 404)
        return Response(data, media_type="image/png")

    app.include_router(v1)
    app.add_middleware(_Count, metrics=metrics)
    return app


class _Count:
    """HTTP answers by route and code (plain ASGI: a BaseHTTPMiddleware would hide client
    disconnects from the handlers)."""

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

        await self.app(scope, receive, sending)
        route = getattr(scope.get("route"), "path", "other")
        self.metrics.http.labels(route=route, code=str(code[0] if code else 0)).inc()


def serve(engine, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          on_listen=None, trace=None) -> Service:
    """Run the service until SIGTERM / SIGINT: uvicorn stops accepting, open requests finish,
    then admitted jobs drain (cancelled after [serve] request_timeout_s). Returns the drained
    service (its jobs say how each ended). ``trace``: ``engine.trace.TraceOptions`` (``--trace``)."""
    import signal
    import threading

    import uvicorn

    from kbridge.engine.trace import Tracer

    svc = Service(engine, Metrics(), Tracer(trace, {"serve": f"{host}:{port}"}) if trace else None)
    app = create_app(svc, api_key, drain_timeout_s=svc.limits.request_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=svc.limits.request_timeout_s))
    if on_listen:
        on_listen(host, port)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has shut down; a drained stop exits 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run()
    return svc
